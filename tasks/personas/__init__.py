"""Persona stages: schema, filters, Text-to-Persona, Persona-to-Persona, frontier, input files."""
