"""A model's own chat template (the Jinja template of its tokenizer_config.json), rendered as
transformers renders it: jinja2's immutable sandbox (templates from a hub are untrusted code),
trim_blocks and lstrip_blocks, loop controls, `raise_exception`, `tojson`, `strftime_now`.

The loss mask covers what the assistant says. A template that marks it with
`{% generation %} ... {% endgeneration %}` gets exactly those characters (what transformers'
return_assistant_tokens_mask gives); any other template gets, for each assistant message, the
text between the conversation rendered up to it with add_generation_prompt and rendered with
it — its content, its end-of-turn token and whatever the template puts after them. Tokens are
learned when they start inside such a span. The rendered text is tokenized once, without
adding special tokens (the template places bos itself), so the ids hold one bos.
"""

import contextvars
import datetime
import json

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

_TRACK = contextvars.ContextVar("generation_spans", default=None)


class _Generation(Extension):
    """{% generation %}…{% endgeneration %}: records the [start, end) characters it renders."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_span"), [], [], body).set_lineno(lineno)

    def _span(self, caller):
        text = caller()
        tracking = _TRACK.get()
        if tracking is not None:
            blocks, spans = tracking
            start = len("".join(blocks))
            spans.append((start, start + len(text)))
        return text


def _raise(message):
    raise TemplateError(message)


def _environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, \
        sort_keys=False: json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                                    separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    def __init__(self, tok):
        self.tok = tok
        self.template = _environment().from_string(tok.chat_template)
        self.tracked = "{% generation" in tok.chat_template or "{%- generation" in \
            tok.chat_template
        piece = lambda i: None if i is None else tok.id_to_piece(i)
        self.tokens = {"bos_token": piece(tok.bos_id), "eos_token": piece(tok.eos_id),
                       "pad_token": piece(tok.pad_id), "unk_token": piece(tok.unk_id)}

    def text(self, messages, add_generation_prompt=False, spans=None) -> str:
        blocks = []
        token = _TRACK.set((blocks, spans if spans is not None else []))
        try:
            for block in self.template.generate(messages=messages,
                                                add_generation_prompt=add_generation_prompt,
                                                **self.tokens):
                blocks.append(block)
        finally:
            _TRACK.reset(token)
        return "".join(blocks)

    def assistant_spans(self, messages) -> tuple[str, list]:
        spans = []
        full = self.text(messages, spans=spans)
        if self.tracked:
            return full, spans
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self.text(messages[:i], add_generation_prompt=True)
            upto = self.text(messages[: i + 1])
            if not (full.startswith(before) and full.startswith(upto)):
                raise ValueError("the chat template does not render a conversation's prefix as "
                                 "a prefix of the conversation: mark the assistant text with "
                                 "{% generation %} so the loss mask can be found")
            spans.append((len(before), len(upto)))
        return full, spans

    def conversation(self, messages) -> tuple[list[int], list[int]]:
        """(ids, loss_mask) of a conversation, the mask on the assistant spans."""
        full, spans = self.assistant_spans(messages)
        ids, offsets = self.tok.encode_with_offsets(full)
        mask = [int(any(a <= start < b for a, b in spans)) for start, _ in offsets]
        return ids, mask

    def prompt(self, messages) -> list[int]:
        return self.tok.encode(self.text(messages, add_generation_prompt=True))
