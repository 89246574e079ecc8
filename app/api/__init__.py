"""HTTP routes: each module parses, calls the core, renders."""
