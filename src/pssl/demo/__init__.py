"""The embedded demo: synthetic images with hidden object masks, in the real datasets' layouts."""
