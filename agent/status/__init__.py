"""Telling the technician: the status LED, ``result.json`` and ``provisioning.log``.

* :mod:`agent.status.led`: :func:`~agent.status.led.open_led` gives the board's LED
  (Linux LED class) or a no-op; ``show(LedPattern.WORKING | SUCCESS | FAILURE)``.
* :mod:`agent.status.result`: :class:`~agent.status.result.RunResult` (``result.json``,
  schema in ``docs/schemas/result.schema.json``), :class:`~agent.status.result.DeviceStatus`,
  :func:`~agent.status.result.status_for_error`, :class:`~agent.status.result.Timings`.
* :mod:`agent.status.runlog`: :class:`~agent.status.runlog.RunLog` collects a run's log
  lines with secrets redacted (``provisioning.log``).
"""
