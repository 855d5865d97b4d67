"""The Kafka runtime of the ground layer: the client builder, the consume loop and the commit bookkeeping."""
