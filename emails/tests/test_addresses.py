"""Addresses and subjects that could inject email headers are refused before anything
is written, whoever queues the email."""

import pytest

from emails import services
from emails.models import EmailTemplate, OutgoingEmail
from jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("field", "address", "words"),
    [
        ("to", "anna@example.com\nBcc: victim@example.com", "contains a line break"),
        ("to", "anna@example.com\rBcc: victim@example.com", "contains a line break"),
        ("to", "anna@example.com\r\n", "contains a line break"),
        ("to", "anna@exa\x00mple.com", "contains a NUL character"),
        ("cc", "anna@example.com\x00", "contains a NUL character"),
        ("reply_to", '"anna\x0bBcc: victim"@example.com', "contains a line break"),
        ("to", '"anna\x0cx"@example.com', "contains a line break"),
        ("to", '"anna\x01x"@example.com', "contains a control character ('\\x01')"),
        ("cc", '"anna\tx"@example.com', "contains a control character ('\\t')"),
        ("to", "anna@example.com\u2028Bcc: victim@example.com", "contains a line break"),
        ("to", "anna@example.com\x85Bcc: victim@example.com", "contains a line break"),
    ],
)
def test_queue_email_refuses_header_injection_in_any_address_before_writing(field, address, words):
    fields = {"to": ["bob@example.com"], field: [address]}

    with pytest.raises(services.EmailInputError) as raised:
        services.queue_email(subject="Hello", template=EmailTemplate.TEST, context={}, **fields)

    message = str(raised.value)
    assert words in message and "remove it" in message, message
    assert "\n" not in message and "\x00" not in message, "the sentence names the address escaped"
    assert OutgoingEmail.objects.count() == Job.objects.count() == 0


@pytest.mark.parametrize("subject", ["Hi\x00there", "Hi\u2028Bcc: victim@example.com", "Hi\x0bthere"])
def test_queue_email_refuses_a_subject_that_could_break_its_header(subject):
    with pytest.raises(services.EmailInputError, match="subject contains"):
        services.queue_email(to=["bob@example.com"], subject=subject, template=EmailTemplate.TEST)
    assert OutgoingEmail.objects.count() == Job.objects.count() == 0
