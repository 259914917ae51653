"""The ASGI 1 conformance suite of asgiref 1.1.2, pointed at shmchannels.ChannelLayer.

A template of shmchannels' repository: tests/peer/run_asgiref_conformance.py
copies it into a temporary directory and runs it with the pytest of the
separate ASGI 1 virtualenv (asgiref 1.1.2, no Django Channels).

The module, not the class, is imported, so that pytest does not collect the
abstract ``ConformanceTestCase`` itself.
"""

import os

from asgiref import conformance

import shmchannels

PREFIX = os.environ["SHMCH_PEER_PREFIX"]


class TestShmChannelsConformance(conformance.ConformanceTestCase):
    channel_layer = shmchannels.ChannelLayer(prefix=PREFIX, expiry=1, group_expiry=2, capacity=5)
    expiry_delay = 1.1
    capacity_limit = 5
