"""The rule extractor on questions: what a turn asks about is never learned.

For an insurer or a bank a wrong identifier is worse than none: a value the agent offers for
confirmation, or one of two alternatives, would otherwise supersede the real one.
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
