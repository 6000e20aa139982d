"""cxlspeaks: Bragg-peak hit finding, peak finding and beam-parameter inference for CXLS Eiger 4M frames."""

__version__ = "0.1.0"
