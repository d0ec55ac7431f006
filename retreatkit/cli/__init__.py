"""Command lines: argument parsing and printing only."""
