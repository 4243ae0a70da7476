"""The registry side: the provisioning CA, templates, RegisterThing, bulk registration."""
