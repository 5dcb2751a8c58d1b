"""The gRPC surface: servicers, validation and the server itself."""
