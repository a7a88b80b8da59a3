"""The kubelvs command line."""
