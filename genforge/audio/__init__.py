"""Audio: features shared by speech data, acoustic models and vocoders."""
