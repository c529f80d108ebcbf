"""The live-audio engine: the media-stream consumer, per-process admission, paced playback, and
stream control (tokens, one stream per call across processes, cross-process control messages).

It stands on ``calls.services`` (and binds the domain's stream port at start-up, ``control.register``);
the domain never imports it. Carrier wire formats live in ``providers/`` (``twilio_stream``)."""
