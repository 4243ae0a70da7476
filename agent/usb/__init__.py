"""Finding the provisioning stick and reading it in user space.

Interfaces for the daemon and the provisioning run:

* **Events**: :func:`agent.usb.factory.open_source` builds the configured
  :class:`~agent.usb.base.StickSource` (``udev``/``kernel``: :mod:`agent.usb.udev`;
  ``directory``: :mod:`agent.usb.directory`). It is an async context manager and an async
  iterator of :class:`~agent.usb.base.StickInserted` / :class:`~agent.usb.base.StickRemoved`
  carrying a :class:`~agent.usb.base.Stick` (stable ``stick_id``, ``node``, properties)::

      async with open_source(config.usb, board.profile.usb) as source:
          async for event in source:
              ...

* **Which device qualifies**: :func:`agent.usb.qualify.qualify`, a pure function over a
  uevent property set and the parent ``usb_device``'s attributes.
* **Reading the stick**: :class:`agent.usb.media.StickMedia` (settings from
  :func:`agent.usb.factory.media_settings`) finds exactly one archive, copies it to a
  private runtime directory, writes ``edge-agent/result.json`` and ``provisioning.log``
  back, and releases the stick. Refusals are :class:`agent.usb.errors.StickRefusedError`
  subclasses (400, the run ends FAILED); failures of the appliance are
  :class:`agent.usb.errors.MediaError` subclasses (500, the run ends ERROR).
"""
