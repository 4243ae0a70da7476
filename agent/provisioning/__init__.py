"""The provisioning run: a stick's archive to a SUCCEEDED report, persisted at every step.

:mod:`agent.provisioning.store` keeps the runs and their pending reports in ``agent.db``;
:mod:`agent.provisioning.run` is the state machine; :mod:`agent.provisioning.service` joins
it to the stick source, the LED, the stick write-back and the operational MQTT link.
"""
