"""rating: a telephony usage rating pipeline (CDRs -> exact charges -> prepaid balances)."""

__version__ = "0.1.0"
