"""The organiser's dashboard: a Textual app that reads and acts over the admin API only."""
