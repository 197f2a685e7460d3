"""GreenCache command line and local deployment start/stop (the top layer)."""
