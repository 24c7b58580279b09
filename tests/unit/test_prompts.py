from app.domain.dialogue import Example, Turn
from app.domain.prompts import build_messages, system_prompt

NEAREST = Example("a", "Move it to 3pm", "( Revise )", Turn("Book lunch", "( Lunch )", "Done."))
SECOND = Example("b", "Who is my manager?", "( Manager )")


def test_system_message_first():
    messages = build_messages("Book dinner", [], [NEAREST, SECOND])

    assert messages[0].role == "system"
    assert messages[0].content == system_prompt()
    assert "one plan" in messages[0].content


def test_examples_alternate_and_nearest_is_last():
    messages = build_messages("Book dinner", [], [NEAREST, SECOND])

    roles = [message.role for message in messages[1:]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert messages[3].content.endswith("Request: Move it to 3pm")
    assert messages[4].content == "( Revise )"


def test_example_shows_previous_turn():
    messages = build_messages("Book dinner", [], [NEAREST])

    assert messages[1].content == (
        "Previous request: Book lunch\n"
        "Previous plan: ( Lunch )\n"
        "Assistant replied: Done.\n"
        "Request: Move it to 3pm"
    )


def test_request_carries_context_turns():
    context = [Turn("Book lunch tomorrow"), Turn("Add Abby", "( AddAbby )", None)]

    request = build_messages("Make it 1pm", context, [])[-1]

    assert request.role == "user"
    assert request.content == (
        "Previous request: Book lunch tomorrow\n"
        "Previous request: Add Abby\n"
        "Previous plan: ( AddAbby )\n"
        "Request: Make it 1pm"
    )
