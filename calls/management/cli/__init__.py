"""Helpers of the ``voicecall`` management command: the RPC client it talks to a running server
with, the ledger tail, setup checks and tunnel exposure."""
