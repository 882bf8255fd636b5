"""The only package that imports faust and aiokafka: thin adapters around the pure core."""
