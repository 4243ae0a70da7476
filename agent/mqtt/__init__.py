"""MQTT on the appliance: the client, the durable outbox, fleet provisioning, commands."""
