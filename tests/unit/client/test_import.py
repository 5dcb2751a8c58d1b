import subprocess
import sys

# (grpcio itself probes for grpc_tools and grpc_health when they are installed.)
SERVER_ONLY = ("numpy", "opentelemetry", "metaas.server", "click", "rich", "aiosqlite")


def test_client_imports_without_server_dependencies() -> None:
    code = (
        "import sys, metaas.client, metaas.v1.ingest_pb2_grpc, metaas.v1.query_pb2_grpc\n"
        f"loaded = [m for m in sys.modules if m.startswith({SERVER_ONLY!r})]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
