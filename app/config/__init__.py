"""Configs: typed schemas of every command, cross-field rules, safe `_target_` building."""
