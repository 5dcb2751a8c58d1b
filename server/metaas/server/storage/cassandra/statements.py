"""The CQL statements the backend prepares, by name."""

from __future__ import annotations

from typing import Final

# Statement templates ({ks} is the keyspace) and whether each is a read.
CQL: Final = {
    "insert_partial": (
        "INSERT INTO {ks}.partials "
        "(app, metric, hour, minute, labels, writer, epoch, distribution) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
        False,
    ),
    "insert_hourly": (
        "INSERT INTO {ks}.hourly "
        "(app, metric, day, hour, labels, writer, epoch, distribution) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
        False,
    ),
    "insert_series": (
        "INSERT INTO {ks}.series_by_app (app, day, hour, metric, labels) "
        "VALUES (?, ?, ?, ?, ?) USING TTL ?",
        False,
    ),
    "select_range": (
        "SELECT minute, labels, writer, epoch, distribution FROM {ks}.partials "
        "WHERE app = ? AND metric = ? AND hour = ? AND minute >= ? AND minute < ?",
        True,
    ),
    "select_series_range": (
        "SELECT minute, labels, writer, epoch, distribution FROM {ks}.partials "
        "WHERE app = ? AND metric = ? AND hour = ? AND minute IN ? AND labels IN ?",
        True,
    ),
    "select_hourly_series_range": (
        "SELECT hour, labels, writer, epoch, distribution FROM {ks}.hourly "
        "WHERE app = ? AND metric = ? AND day = ? AND hour IN ? AND labels IN ?",
        True,
    ),
    "select_labels": (
        "SELECT labels FROM {ks}.partials "
        "WHERE app = ? AND metric = ? AND hour = ? AND minute >= ? AND minute < ?",
        True,
    ),
    "select_one": (
        "SELECT epoch, distribution FROM {ks}.partials WHERE app = ? AND metric = ? "
        "AND hour = ? AND minute = ? AND labels = ? AND writer = ?",
        True,
    ),
    "select_hourly_range": (
        "SELECT hour, labels, writer, epoch, distribution FROM {ks}.hourly "
        "WHERE app = ? AND metric = ? AND day = ? AND hour >= ? AND hour < ?",
        True,
    ),
    "select_hourly_one": (
        "SELECT epoch, distribution FROM {ks}.hourly WHERE app = ? AND metric = ? "
        "AND day = ? AND hour = ? AND labels = ? AND writer = ?",
        True,
    ),
    "select_series": (
        "SELECT hour, metric, labels FROM {ks}.series_by_app "
        "WHERE app = ? AND day = ? AND hour >= ? AND hour < ?",
        True,
    ),
}
