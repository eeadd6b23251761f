"""Run folders: layout (every path named once), claim, record, export, read and compare."""
