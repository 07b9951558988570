"""Converters that turn public recommendation data into RecBole atomic files."""
