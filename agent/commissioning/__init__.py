"""Commissioning of Zigbee, Z-Wave and Wi-Fi devices from scanned QR codes.

:mod:`agent.commissioning.qr` parses the codes (pure functions), :mod:`.things` keeps the
managed things and their lifecycle, and one backend per radio does the joining.
"""
