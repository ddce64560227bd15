"""The multiple-choice kind on literal strings: prompt shapes, letter extraction, picking."""

import pytest

from lab.errors import LabError
from lab.eval.data import Question
from lab.eval.kinds.choice import continuations, extract_letter, gen_messages, logprob_prompt, pick
from lab.eval.spec import load_spec

LETTERS = ["A", "B", "C", "D"]
Q = Question("abstract_algebra", 3, "Find the order of 2 in Z_5.", ["1", "2", "4", "5"], "C")
SHOT = Question("abstract_algebra", 0, "What is 1+1?", ["1", "2", "3", "4"], "B")


def test_mmlu_prompt_has_the_widely_used_shape():
    t = load_spec("mmlu").prompts
    p = logprob_prompt(Q, [SHOT], "abstract algebra", t, LETTERS)
    assert p == ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                 "What is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
                 "Find the order of 2 in Z_5.\nA. 1\nB. 2\nC. 4\nD. 5\nAnswer:")
    # The scored continuation carries the space, exactly as the shots' answers do.
    assert continuations(LETTERS) == [" A", " B", " C", " D"]


def test_ceval_prompt_uses_the_chinese_header_and_answer_cue():
    t = load_spec("ceval").prompts
    options = ["主机之间", "网络之间", "进程之间", "主机到网络"]
    q = Question("computer_network", 0, "TCP端对端通信作用于____", options, "C")
    p = logprob_prompt(q, [], "计算机网络", t, LETTERS)
    # lm-eval's ceval-valid wording: no "考试" (the official template has it, below)
    assert p == ("以下是中国关于计算机网络的单项选择题，请选出其中的正确答案。\n\n"
                 "TCP端对端通信作用于____\nA. 主机之间\nB. 网络之间\nC. 进程之间\nD. 主机到网络\n答案：")


SPACED = Question("abstract_algebra", 1, "  What is 2+2? ", ["3 ", "4", " 5", "6\t"], "B")


def test_default_prompts_strip_the_question_but_keep_options_as_written():
    """lm-eval's doc_to_text: {{question.strip()}}, options untouched (a trailing space is a different token)."""
    p = logprob_prompt(Q, [SPACED], "abstract algebra", load_spec("mmlu").prompts, LETTERS)
    assert p == ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                 "What is 2+2?\nA. 3 \nB. 4\nC.  5\nD. 6\t\nAnswer: B\n\n"
                 "Find the order of 2 in Z_5.\nA. 1\nB. 2\nC. 4\nD. 5\nAnswer:")


def test_mmlu_official_template_is_hendrycks_evaluate_py():
    t = load_spec("mmlu").prompts_for("official")
    p = logprob_prompt(SPACED, [SHOT], "abstract algebra", t, LETTERS)
    assert p == ("The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
                 "What is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
                 "  What is 2+2? \nA. 3 \nB. 4\nC.  5\nD. 6\t\nAnswer:")
    assert continuations(LETTERS, t) == [" A", " B", " C", " D"]


def test_ceval_official_template_has_kaoshi_and_no_space_before_the_letter():
    t = load_spec("ceval").prompts_for("official")
    shot = Question("computer_network", 0, "1+1=", ["1", "2", "3", "4"], "B")
    p = logprob_prompt(SPACED, [shot], "计算机网络", t, LETTERS)
    assert p == ("以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n"
                 "1+1=\nA. 1\nB. 2\nC. 3\nD. 4\n答案：B\n\n"
                 "  What is 2+2? \nA. 3 \nB. 4\nC.  5\nD. 6\t\n答案：")
    assert continuations(LETTERS, t) == LETTERS


def test_cmmlu_official_template_opens_each_question_with_timu():
    t = load_spec("cmmlu").prompts_for("official")
    shot = Question("agronomy", 0, "1+1=", ["1", "2", "3", "4"], "B")
    p = logprob_prompt(SPACED, [shot], "农学", t, LETTERS)
    assert p == ("以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
                 "题目：1+1=\nA. 1\nB. 2\nC. 3\nD. 4\n答案是：B\n\n"
                 "题目：  What is 2+2? \nA. 3 \nB. 4\nC.  5\nD. 6\t\n答案是：")
    assert continuations(LETTERS, t) == LETTERS


def test_an_unknown_template_is_one_sentence_naming_the_known_ones():
    with pytest.raises(LabError, match="ceval has no prompt template 'paper'; its templates are: default, official"):
        load_spec("ceval").prompts_for("paper")
    spec = load_spec("ceval")
    assert spec.prompts_for("default") is spec.prompts_for(None) is spec.prompts


def test_zero_shot_prompt_has_no_examples():
    t = load_spec("mmlu").prompts
    p = logprob_prompt(Q, [], "abstract algebra", t, LETTERS)
    assert p.count("Answer:") == 1


def test_gen_messages_turn_shots_into_earlier_turns():
    t = load_spec("ceval").prompts
    msgs = gen_messages(Q, [SHOT], "抽象代数", t, LETTERS)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[1]["content"] == "答案：B"
    assert "Find the order of 2 in Z_5." in msgs[2]["content"] and "C. 4" in msgs[2]["content"]


@pytest.mark.parametrize("reply, letter", [
    ("Answer: B", "B"),
    ("The answer is (C).", "C"),
    ("Final answer: **D**", "D"),
    ("the answer to this question is A", "A"),
    ("Let us check option A first... Answer: D. Option C is wrong too.", "D"),
    ("B", "B"),
    ("(A) because the group is cyclic", "A"),
    ("C. 4", "C"),
    ("Reasoning...\n**B**", "B"),
    ("答案：C", "C"),
    ("答案是 B。", "B"),
    ("正确答案为（D）", "D"),
    ("答案：Ｂ", "B"),  # full-width letter
    ("根据题意，应选C。", "C"),
    ("B、进程之间", "B"),
    ("分析如下……\n所以答案是A", "A"),
])
def test_extract_letter_reads_the_chosen_letter(reply, letter):
    assert extract_letter(reply, LETTERS) == letter


@pytest.mark.parametrize("reply", [
    "",
    "I do not know.",
    "The answer is a matter of taste.",  # lower-case "a" is a word, not a letter
    "Either could be right.",
    "我不确定。",
])
def test_extract_letter_says_none_instead_of_guessing(reply):
    assert extract_letter(reply, LETTERS) is None


def test_extract_letter_accepts_an_options_exact_text():
    assert extract_letter("进程之间。", LETTERS, ["主机之间", "网络之间", "进程之间", "主机到网络"]) == "C"
    assert extract_letter("4", LETTERS, ["1", "2", "4", "5"]) == "C"


def test_pick_takes_the_highest_and_breaks_ties_to_the_earlier_letter():
    assert pick([-3.0, -1.0, -2.0, -5.0], LETTERS) == "B"
    assert pick([-1.0, -2.0, -1.0, -1.5], LETTERS) == "A"
