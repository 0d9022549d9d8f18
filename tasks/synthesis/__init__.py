"""Persona-driven synthesis: which personas, which use case, which prompt mode, what a usable answer is."""
