"""Gemma's chat formats as Jinja templates, for the files other tools render.

Hugging Face folders (``chat_template.jinja``) and GGUF files
(``tokenizer.chat_template``, rendered by llama.cpp and ollama) carry the
same templates: Jinja versions of ``keras_gemma.chat.chat_template`` for
string contents, starting with ``bos_token`` as transformers' templates do
(tests render them and compare with ``chat_template``).
"""

from keras_gemma import chat

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] in ('assistant', 'model') else message['role'] -%}"
    "{{ '" + chat.START_OF_TURN + "' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '" + chat.END_OF_TURN + "\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '" + chat.START_OF_TURN + "model\\n' }}"
    "{%- endif -%}"
)

_G4_START, _G4_END = chat.GEMMA4_START_OF_TURN, chat.GEMMA4_END_OF_TURN
GEMMA4_CHAT_TEMPLATE = (
    "{%- macro strip_thinking(text) -%}"
    "{%- set ns = namespace(kept='') -%}"
    "{%- for part in text.split('" + chat.END_OF_CHANNEL + "') -%}"
    "{%- set ns.kept = ns.kept + part.split('" + chat.START_OF_CHANNEL + "')[0] -%}"
    "{%- endfor -%}"
    "{{- ns.kept | trim -}}"
    "{%- endmacro -%}"
    "{{ bos_token }}"
    "{%- set loop_messages = messages -%}"
    "{%- if messages[0]['role'] == 'system' or enable_thinking -%}"
    "{{ '" + _G4_START + "system\\n' }}"
    "{%- if enable_thinking -%}{{ '" + chat.THINK + "\\n' }}{%- endif -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{ messages[0]['content'] | trim }}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{ '" + _G4_END + "\\n' }}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] in ('assistant', 'model') else message['role'] -%}"
    "{{ '" + _G4_START + "' + role + '\\n' }}"
    "{%- if role == 'model' -%}{{ strip_thinking(message['content']) }}"
    "{%- else -%}{{ message['content'] | trim }}{%- endif -%}"
    "{{ '" + _G4_END + "\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '" + _G4_START + "model\\n' }}"
    "{%- endif -%}"
)
CHAT_TEMPLATES = {"gemma": GEMMA_CHAT_TEMPLATE, "gemma4": GEMMA4_CHAT_TEMPLATE}


def chat_template_for(tokenizer):
    """The template of ``tokenizer``'s family (Gemma 1-3, or Gemma 4)."""
    return CHAT_TEMPLATES[chat.chat_family(tokenizer)]
