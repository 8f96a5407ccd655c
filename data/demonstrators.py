"""Who wrote the SFT demonstrations of the synthetic tasks.

Real SFT data comes from many writers of uneven quality, and SFT imitates all of them; RLHF then
moves the policy towards what raters prefer (Ouyang et al. 2022, InstructGPT: labelers prefer
the RLHF model's answers over the SFT model's on held-out prompts). The synthetic world keeps
that structure with two demonstrators:

  direct  writes the reference reply of data/tasks.py ("The sum of 12 and 7 is 19.");
  chatty  wraps the same reply in an opener and a sign-off ("Sure! Let me work that out. The
          sum of 12 and 7 is 19. I hope this helps!").

Both are equally correct. The gold scorer (data/tasks.py) prefers the direct reply: the answer
comes after two sentences ("Sure!" is one) and loses BURIED², and the longer reply loses
sqrt(L_allow / L), so a chatty reply is worth 0.40–0.60 of the direct one (mean 0.53 over 64
tasks). A share `chatty_fraction` of
the demonstrations is chatty. All chatty openers start with the same word, so when it is above
one half the SFT policy's most likely first token is the chatty one and its greedy answers are
chatty on every family: the preference the reward model can learn, and PPO can act on, is a
style that carries over to prompts never seen in training.
"""

from __future__ import annotations

import random

from data import tasks as tasks_lib

OPENERS = (
    "Sure! Let me work that out.",
    "Sure! Here is the answer.",
    "Sure! Happy to help with that.",
)
CLOSERS = ("I hope this helps!", "Let me know if you need anything else.", "Have a nice day!")


def is_chatty(reply: str) -> bool:
    """True for a reply that opens like the chatty demonstrator."""
    return reply.lstrip().startswith(OPENERS[0].split()[0])


def chatty_reply(answer: str, rng: random.Random) -> str:
    """The chatty demonstrator's version of a reference reply."""
    return f"{rng.choice(OPENERS)} {answer} {rng.choice(CLOSERS)}"


def demonstrations(tasks, chatty_fraction: float, seed: int | str) -> list[list[dict]]:
    """SFT conversations for `tasks`: a share `chatty_fraction` written by the chatty
    demonstrator (drawn per task, deterministic in seed), the rest by the direct one."""
    if not 0.0 <= chatty_fraction <= 1.0:
        raise ValueError(f"chatty_fraction must be in [0, 1], got {chatty_fraction}")
    rng = random.Random(f"demonstrators:{seed}")
    out = []
    for task in tasks:
        msgs = tasks_lib.task_messages(task)
        if rng.random() < chatty_fraction:
            msgs[1] = {"role": "assistant", "content": chatty_reply(task.answer, rng)}
        out.append(msgs)
    return out
