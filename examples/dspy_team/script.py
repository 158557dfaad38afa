"""The scripted answers of the example's dummy LM: **not a model**, a table written by hand.

With no ``OTPY_DSPY_LM`` set, every agent of the example runs on DSPy's ``DummyLM``: it answers a
prompt with the entry of a script whose key is a substring of the prompt's last message (the
task's text for the planner and the coders, the code's text for the reviewer). The answers are
chosen so that the choices the optimizer searches score differently on the dataset:

- the careful coder's code handles each task's edge case (``must``: what the metric looks for),
  the quick coder's misses it in half the tasks, and the reviewer rejects those;
- above ``HOT`` (``lm_temperature``), the careful coder gets sloppy on some tasks (``careless``),
  as a real model sampling hot would.

With a real LM (``OTPY_DSPY_LM``), none of this is used.
"""

from __future__ import annotations

from dataclasses import dataclass

HOT = 1.0  # lm_temperature above this: the careful coder answers some tasks carelessly


@dataclass(frozen=True)
class Task:
    name: str
    text: str  # what the user asks (the example's input `task`)
    plan: str  # the planner's scripted plan
    careful: str  # the careful coder's code: handles the edge case
    quick: str  # the quick coder's code: the same when the task is easy, else it misses the edge case
    must: tuple[str, ...]  # what correct code contains (the metric's label)
    careless: bool = False  # above HOT, the careful coder answers like the quick one


def _task(name, text, plan, careful, quick=None, must=(), careless=False) -> Task:
    return Task(name, text, plan, careful.strip() + "\n", (quick or careful).strip() + "\n", tuple(must), careless)


TASKS = [
    _task("fizzbuzz", "Write fizzbuzz(n): 'FizzBuzz' for multiples of 15, 'Fizz' of 3, 'Buzz' of 5, else str(n).",
          "Test divisibility by 15 first, then 3, then 5; fall back to str(n).",
          """
def fizzbuzz(n):
    if n % 15 == 0:
        return "FizzBuzz"
    if n % 3 == 0:
        return "Fizz"
    if n % 5 == 0:
        return "Buzz"
    return str(n)""",
          """
def fizzbuzz(n):
    if n % 3 == 0:
        return "Fizz"
    if n % 5 == 0:
        return "Buzz"
    return str(n)""", must=("% 15",), careless=True),
    _task("is_prime", "Write is_prime(n): whether the integer n is a prime number.",
          "Numbers below 2 are not prime; try divisors up to the square root.",
          """
def is_prime(n):
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True""",
          """
def is_prime(n):
    for d in range(2, n):
        if n % d == 0:
            return False
    return True""", must=("n < 2",)),
    _task("reverse_words", "Write reverse_words(s): the words of s in reverse order, joined by single spaces.",
          "Split on whitespace, reverse the list, join with a space.",
          """
def reverse_words(s):
    return " ".join(reversed(s.split()))""", must=(".split()",)),
    _task("mean", "Write mean(xs): the arithmetic mean of a list of numbers, 0.0 for an empty list.",
          "Return 0.0 for an empty list; else the sum divided by the length.",
          """
def mean(xs):
    if not xs:
        return 0.0
    return sum(xs) / len(xs)""",
          """
def mean(xs):
    return sum(xs) / len(xs)""", must=("if not xs",), careless=True),
    _task("clamp", "Write clamp(x, low, high): x limited to the range low..high.",
          "Take the max with low, then the min with high.",
          """
def clamp(x, low, high):
    return min(max(x, low), high)""", must=("min(max(",)),
    _task("factorial", "Write factorial(n): n! for an integer n >= 0.",
          "0! is 1; multiply 1..n in a loop.",
          """
def factorial(n):
    result = 1
    for k in range(2, n + 1):
        result *= k
    return result""",
          """
def factorial(n):
    return n * factorial(n - 1)""", must=("result = 1",)),
    _task("count_vowels", "Write count_vowels(s): how many of the characters of s are vowels (aeiou, any case).",
          "Lower-case s, count the characters in 'aeiou'.",
          """
def count_vowels(s):
    return sum(c in "aeiou" for c in s.lower())""", must=(".lower()",)),
    _task("safe_divide", "Write safe_divide(a, b): a / b, or None when b is 0.",
          "Return None when b == 0; else a / b.",
          """
def safe_divide(a, b):
    if b == 0:
        return None
    return a / b""",
          """
def safe_divide(a, b):
    return a / b""", must=("b == 0",)),
    # held out: the validation set
    _task("palindrome", "Write is_palindrome(s): whether s reads the same backwards, ignoring case and spaces.",
          "Keep the letters lower-cased without spaces; compare with the reverse.",
          """
def is_palindrome(s):
    t = s.replace(" ", "").lower()
    return t == t[::-1]""",
          """
def is_palindrome(s):
    return s == s[::-1]""", must=(".lower()",), careless=True),
    _task("max_of", "Write max_of(xs): the largest number of xs, None for an empty list.",
          "Return None for an empty list; else the built-in max.",
          """
def max_of(xs):
    if not xs:
        return None
    return max(xs)""",
          """
def max_of(xs):
    return max(xs)""", must=("if not xs",)),
    _task("squares", "Write squares(n): the list of the squares of 0..n-1.",
          "A list comprehension over range(n).",
          """
def squares(n):
    return [k * k for k in range(n)]""", must=("range(n)",)),
    _task("title_case", "Write title_case(s): s with each word's first letter upper-cased.",
          "Split into words, capitalize each, join with spaces.",
          """
def title_case(s):
    return " ".join(w.capitalize() for w in s.split())""", must=(".capitalize()",)),
]

BY_NAME = {task.name: task for task in TASKS}

# What a task the script does not know gets (a real LM writes real code).
UNKNOWN_PLAN = "Write the function the task names; keep it short."
UNKNOWN_CODE = "def solution(*args):\n    raise NotImplementedError  # scripted answer: the dummy LM knows no such task\n"


def correct(task: Task, code: str) -> bool:
    """Whether ``code`` has what the task's correct code has (the reviewer's scripted verdict)."""
    return all(snippet in code for snippet in task.must)


def planner_script(settings=None) -> dict:
    answers = {task.text: {"plan": task.plan} for task in TASKS}
    return {**answers, "[[ ## task ## ]]": {"plan": UNKNOWN_PLAN}}  # the last key matches any prompt


def coder_script(careful: bool, settings=None) -> dict:
    """A coder's answers per task; ``settings``: the LM's (``lm_*`` without the prefix), called again
    whenever the agent makes its LM (an ``lm_temperature`` change): above ``HOT`` the careful coder
    answers the ``careless`` tasks like the quick one."""
    hot = float((settings or {}).get("temperature") or 0.0) > HOT
    answers = {}
    for task in TASKS:
        code = task.careful if careful and not (hot and task.careless) else task.quick
        reasoning = f"The edge case: {task.plan}" if code == task.careful else "Straight to the code."
        answers[task.text] = {"reasoning": reasoning, "code": code} if careful else {"code": code}
    fallback = {"reasoning": "Unknown task.", "code": UNKNOWN_CODE} if careful else {"code": UNKNOWN_CODE}
    return {**answers, "[[ ## task ## ]]": fallback}


def careful_script(settings=None) -> dict:
    """The careful coder's answers, given the LM settings (``{"temperature": ...}``)."""
    return coder_script(True, settings)


def quick_script(settings=None) -> dict:
    return coder_script(False, settings)


def reviewer_script(settings=None) -> dict:
    answers = {}
    for task in TASKS:
        for code in {task.careful, task.quick}:
            ok = correct(task, code)
            answers[code.strip()] = {"verdict": "approve" if ok else "reject",
                                     "feedback": "Handles the edge case." if ok else f"Misses: {task.plan}"}
    return {**answers, "[[ ## code ## ]]": {"verdict": "reject", "feedback": "Not implemented."}}
