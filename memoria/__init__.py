"""Memoria region runtime."""
