"""factory_boy factories for the call ledger."""

from __future__ import annotations

import factory
from django.utils import timezone

from calls.models import AllowedCaller, Call, TranscriptEntry


class CallFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Call

    provider = "mock"
    direction = "outbound"
    state = "initiated"
    mode = "notify"
    from_number = "+15550000000"
    to_number = factory.Sequence(lambda n: f"+1555000{n:04d}")
    initial_message = "Hello from Voicecall"


class AnsweredCallFactory(CallFactory):
    state = "listening"
    mode = "conversation"
    provider_call_id = factory.Sequence(lambda n: f"mock-call-{n}")
    initial_message_delivered = True
    answered_at = factory.LazyFunction(timezone.now)


class TranscriptEntryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TranscriptEntry

    call = factory.SubFactory(AnsweredCallFactory)
    speaker = "user"
    text = "hello"


class AllowedCallerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AllowedCaller

    number = factory.Sequence(lambda n: f"+1444000{n:04d}")
    label = "friend"
