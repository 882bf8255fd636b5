"""The pure rating core: money, rate cards, rating and accounts. No Kafka, no Faust, no I/O
beyond reading a rate-card file, so every rule is testable with plain values."""
