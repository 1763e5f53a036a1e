"""The rule extractor on questions and negations: what a turn asks about or denies is never learned.

For an insurer or a bank a wrong identifier is worse than none: a value the agent offers for
confirmation, one of two alternatives, or a value the user denies would otherwise supersede the real one.
"""

from __future__ import annotations

import pytest

from amber.learn import RuleExtractor

r = RuleExtractor()


def facts(text: str, role: str = "user", speaker: str | None = None) -> set[tuple[str, str]]:
    return {(c.attribute, c.value) for c in r.extract_text(text, role=role, speaker=speaker)}


# -- questions -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, role, speaker", [
    ("Can you confirm your policy number is P-99999?", "assistant", None),
    ("Can you confirm your policy number is P-99999?", "assistant", "Support"),
    ("Could you confirm your claim number C-1234, please?", "assistant", None),
    ("Please confirm your policy number is P-99999.", "assistant", None),
    ("Your claim number is C-7788, is that right?", "assistant", None),
    ("Do you mean order 55124?", "assistant", None),
    ("Was it order 55123 or 55124?", "assistant", None),
    ("Is my policy number P-12345 or P-54321?", "user", None),
    ("Is my policy number still P-12345?", "user", None),
    ("My policy number is P-12345, right?", "user", None),
    ("Is my email jo@example.com or jo@work.com?", "user", None),
    ("Is my phone number 07700 900 111?", "user", None),
    ("Is your email jo@example.com?", "assistant", "Melanie"),   # asking the user, not telling
    ("Is your phone 07700 900 111?", "assistant", "Melanie"),
    ("Can you confirm your adjuster is Marcus Lee", "assistant", None),
    ("Do you prefer email?", "assistant", None),
    ("Do you prefer email?", "assistant", "Melanie"),
    ("Would you prefer a call or an email?", "assistant", "Melanie"),
])
def test_a_question_that_offers_a_value_to_confirm_or_alternatives_states_nothing(
        text: str, role: str, speaker: str | None) -> None:
    assert facts(text, role, speaker) == set()


def test_an_agents_confirmation_question_never_supersedes_the_real_identifier() -> None:
    stated = facts("My policy number is P-12345.")
    asked = facts("Can you confirm your policy number is P-99999?", role="assistant")
    assert stated == {("policy_number", "P-12345")} and asked == set()


def test_a_users_own_question_naming_their_identifier_as_context_still_teaches_it() -> None:
    # The user presupposes their own claim; only a value offered for confirmation is in doubt.
    assert facts("What's the status of my claim C-7788?") == {("claim_number", "C-7788")}
    assert facts("Is there an update on my order 55123?") == {("order_number", "55123")}
    assert facts("Is my claim C-7788 approved yet?") == {("claim_number", "C-7788")}
    assert facts("Can you call me on 07700 900 123 instead?") == {("phone", "07700 900 123")}


def test_a_statement_before_an_unrelated_question_or_beside_a_request_is_still_a_statement() -> None:
    assert facts("Your new claim number is C-7788, is there anything else I can help with?",
                 role="assistant") == {("claim_number", "C-7788")}
    assert facts("I moved to York last week, can you update my address?") == {("home_location", "York")}
    assert facts("Please verify my identity, my policy number is P-12345.") == {("policy_number", "P-12345")}
    assert facts("My address is 5 Elm Road, is that OK?") == {("addres", "5 Elm Road")}


# -- negations ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "My policy number is not P-11111, it is P-22222.",
    "My policy number is not P-11111 but P-22222.",
    "My policy number isn't P-11111, it's P-22222.",
    "My policy number is not P-11111, but it's P-22222.",
    "My policy number is P-22222, not P-11111.",
])
def test_a_negated_identifier_is_not_learned_and_the_correction_is(text: str) -> None:
    assert facts(text) == {("policy_number", "P-22222")}


def test_a_bare_negation_learns_nothing() -> None:
    assert facts("My policy number is not P-11111.") == set()
    assert facts("My address is no longer 4 Oak Street.") == set()
    assert facts("My phone is not working.") == set()  # not a phone "number" that supersedes the real one


def test_the_correction_of_an_account_ending_is_learned_and_a_denied_verb_keeps_the_identifier() -> None:
    assert facts("My account isn't the one ending 4021, it's the one ending 8507.") == {("account_number", "8507")}
    # What did not happen to an identifier does not deny it: the order is still the user's.
    assert facts("I haven't received order 55123.") == {("order_number", "55123")}
    assert facts("My order 55123 hasn't arrived yet.") == {("order_number", "55123")}


def test_negated_contact_details_and_statements_are_not_learned_the_corrections_are() -> None:
    assert facts("My email is not jo@old.com, it is jo@new.com.") == {("email", "jo@new.com")}
    assert facts("My phone is not 07700 900 111, it's 07700 900 222.") == {("phone", "07700 900 222")}
    assert facts("I no longer use jo@old.com.") == set()
    assert facts("Please don't email jo@old.com any more, my email is jo@new.com.") == {("email", "jo@new.com")}
    assert facts("I never use my landline 0113 496 0000.") == set()
    assert facts("My account number is 12345678, not 87654321.") == {("account_number", "12345678")}
    assert facts("My address is not 4 Oak Street, it is 5 Elm Road.") == {("addres", "5 Elm Road")}
    assert facts("Your adjuster isn't Marcus Lee, it's Laura Becker.", role="assistant") == {
        ("adjuster", "Laura Becker")}
    assert facts("Your adjuster is not Marcus Lee but Laura Becker.", role="assistant") == {
        ("adjuster", "Laura Becker")}
    assert facts("Please don't call me Rob, call me Robert.") == {("preferred_name", "Robert")}


def test_a_negative_preference_never_takes_the_positive_preference_slot() -> None:
    assert facts("I don't like phone calls.") == set()
    assert facts("I don't prefer phone calls.") == set()
    averse = facts("I'd rather not get phone calls.")
    assert averse and not any(a == "preference:contact_channel" for a, _ in averse)
    assert facts("I'd prefer email, not phone calls.") == {("preference:contact_channel", "email, not phone calls")}
    assert not any(a.startswith("resolution:") for a, _ in facts("Restarting the router never worked."))


@pytest.mark.parametrize("text, attribute", [
    ("I want to claim because my phone was cracked on holiday", "about_phone"),
    ("my phone number is broken", "about_phone"),
    ("my email is down again", "about_email"),
])
def test_a_statement_about_the_phone_or_mailbox_is_not_a_contact_detail(text: str, attribute: str) -> None:
    """Only a value shaped like a phone number or an e-mail address fills those contact slots; "my phone
    was cracked" is about the device, kept under its own attribute so it never supersedes the number."""
    got = facts(text)
    assert {a for a, _ in got} == {attribute}
    assert facts("My mobile is +44 7700 900123 now") == {("phone", "+44 7700 900123")}
