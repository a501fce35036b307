"""The network and its pieces: embedding layers, sharing modes, encoders, heads and the losses."""
