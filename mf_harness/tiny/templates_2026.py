"""Chat templates of the published checkpoints of the families added in late 2026 (LLaVA-NeXT, Qwen3.5, GLM-4V,
Gemma 4; see `templates`)."""

from pathlib import Path

# llava-hf/llava-v1.6-mistral-7b-hf (chat_template.json), as quoted verbatim in openvinotoolkit/openvino.genai
# src/cpp/src/tokenizer.cpp (chat_template_fallback_map, "tiny-random-llava-next, llava-v1.6-mistral"). No BOS
# in the template (the Llama tokenizer prepends <s>); no generation prompt: the turn ends with " [/INST]".
# The assistant turn's '<\\s>' is the checkpoint's own typo (never reached by a generation prompt).
LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\\n' + message['content'][0]['text'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '<\\\\s> '}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


# Qwen/Qwen3.5-* (e.g. Qwen3.5-35B-A3B), without its tool branches: the system turn is rendered only when given,
# contents are trimmed, and the generation prompt opens a think block unless enable_thinking is false (lmms-eval's
# qwen3_5 wrapper passes enable_thinking=True). Copied from the checkpoint's template as embedded (for the
# Qwen3.5-35B-A3B GGUF) in a public Go project's table of chat templates, found with find_string.
QWEN3_5_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- macro render_content(content, do_vision_count, is_system_content=false) %}"
    "{%- if content is string %}{{- content }}"
    "{%- elif content is iterable and content is not mapping %}{%- for item in content %}"
    "{%- if 'image' in item or 'image_url' in item or item.type == 'image' %}"
    "{%- if is_system_content %}{{- raise_exception('System message cannot contain images.') }}{%- endif %}"
    "{%- if do_vision_count %}{%- set image_count.value = image_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}{{- 'Picture ' ~ image_count.value ~ ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif 'video' in item or item.type == 'video' %}"
    "{%- if is_system_content %}{{- raise_exception('System message cannot contain videos.') }}{%- endif %}"
    "{%- if do_vision_count %}{%- set video_count.value = video_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}{{- 'Video ' ~ video_count.value ~ ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item %}{{- item.text }}"
    "{%- else %}{{- raise_exception('Unexpected item type in content.') }}{%- endif %}"
    "{%- endfor %}"
    "{%- elif content is none or content is undefined %}{{- '' }}"
    "{%- else %}{{- raise_exception('Unexpected content type.') }}{%- endif %}"
    "{%- endmacro %}"
    "{%- if not messages %}{{- raise_exception('No messages provided.') }}{%- endif %}"
    "{%- if messages[0].role == 'system' %}"
    "{%- set content = render_content(messages[0].content, false, true)|trim %}"
    "{{- '<|im_start|>system\\n' + content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- set content = render_content(message.content, true)|trim %}"
    "{%- if message.role == 'system' %}"
    "{%- if not loop.first %}{{- raise_exception('System message must be at the beginning.') }}{%- endif %}"
    "{%- elif message.role == 'user' %}{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}{{- raise_exception('Unexpected message role.') }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}{{- '<think>\\n' }}{%- endif %}{%- endif %}"
)

# zai-org/GLM-4.1V-9B-Thinking (revision 3c1471e51dc811b589d4d12b1c1c7c1c941267c2), verbatim: the template as
# recorded with its sha256 (5232dbe7...) in a public renderer-validation artifact found with find_string, and
# identical to the GLM-4.1V template quoted in sglang's test_jinja_template_utils.py. The template writes
# "[gMASK]<sop>" itself (the tokenizer adds no BOS); the generation prompt is "<|assistant|>\n".
GLM4V_CHAT_TEMPLATE = (
    "[gMASK]<sop>\n{%- for msg in messages %}\n    {%- if msg.role == 'system' %}\n<|system|>\n{{ msg.content }}\n"
    "    {%- elif msg.role == 'user' %}\n<|user|>{{ '\\n' }}\n\n        {%- if msg.content is string %}\n"
    "{{ msg.content }}\n        {%- else %}\n            {%- for item in msg.content %}\n"
    "                {%- if item.type == 'video' or 'video' in item %}\n<|begin_of_video|><|video|><|end_of_video|>\n"
    "                {%- elif item.type == 'image' or 'image' in item %}\n<|begin_of_image|><|image|><|end_of_image|>\n"
    "                {%- elif item.type == 'text' %}\n{{ item.text }}\n                {%- endif %}\n"
    "            {%- endfor %}\n        {%- endif %}\n    {%- elif msg.role == 'assistant' %}\n"
    "        {%- if msg.metadata %}\n<|assistant|>{{ msg.metadata }}\n{{ msg.content }}\n        {%- else %}\n"
    "<|assistant|>\n{{ msg.content }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

GLM4V_SPECIAL_TOKENS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                        "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                        "<|begin_of_video|>", "<|end_of_video|>", "<|image|>", "<|video|>", "<think>", "</think>"]

# google/gemma-4-31B-it and gemma-4-26B-A4B-it (the "large" template; transformers' convert_gemma4_weights.py takes it
# from gg-hf-gg/gemma-4-31B-it, the E2B/E4B one from gg-hf-gg/gemma-4-E4B-it), verbatim in
# gemma-4-31B-it.chat_template.jinja beside this module: 363 lines, 17466 bytes, md5
# 8c34cf93c7a7815b3fdb300a009c4c17. Source: mudler/LocalAI backend/go/dllm/gemma4_renderer.go (commit
# d5edc878cfd29d91bc08efd932ecb9dab740cfbe), which quotes, with line numbers, the tokenizer.chat_template "extracted
# verbatim" from a Gemma 4 26B-A4B-based GGUF (diffusiongemma-26B-A4B-it) and states its size and md5; the text
# rebuilt from that quote has exactly that size and md5. That it is Google's own: public notes give the same size
# (17466 bytes) for the chat_template.jinja of google/gemma-4-12b-it (revision 657684f) and of gemma-4-26b-a4b-it
# conversions, and cite google/gemma-4-31B-it's chat_template.jinja with this line numbering (system turn L175-205,
# message loop L215-353, generation prompt L356-363). Not found verbatim: the later revisions (e.g. gemma-4-12b-it
# on 2026-07-15: tool-response/thinking branches, null handling); the parts of them that were found render what
# lmms-eval's gemma4 wrapper sends (system + user [image, text] + generation prompt) the same way. The template
# writes <bos> itself (the tokenizer adds none); a list-valued system content renders as its texts, each followed
# by a space; an image renders as <|image|> (the processor expands it to <|image> + n x <|image|> + <image|>); the
# generation prompt is "<|turn>model\n" followed, unless enable_thinking is true, by an empty thought channel
# "<|channel>thought\n<channel|>" (the E2B/E4B template has no empty thought channel).
GEMMA4_CHAT_TEMPLATE = (Path(__file__).with_name("gemma-4-31B-it.chat_template.jinja")).read_text()

# The special tokens of the Gemma 4 tokenizer (ids in the real 262144-token vocabulary in brackets): <pad> [0],
# <eos> [1], <bos> [2], <unk> [3], <mask> [4], tool declaration/call/response delimiters [46-51], the string escape
# <|"|> [52], <|think|> [98], thought channel <|channel> <channel|> [100, 101], turns <|turn> <turn|> [105, 106],
# begin-of-image <|image> [255999], begin-of-audio <|audio> [256000], the image/audio soft tokens <|image|> <|audio|>
# [258880, 258881], end-of-image <image|> [258882], end-of-audio <audio|> [258883], <|video|> [258884].
GEMMA4_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|tool>", "<tool|>", "<|tool_call>",
                         "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>', "<|think|>", "<|channel>",
                         "<channel|>", "<|turn>", "<turn|>", "<|image>", "<|audio>", "<|image|>", "<|audio|>",
                         "<image|>", "<audio|>", "<|video|>"]

# The tokenizer's named special tokens (tokenizer_config.json; convert_gemma4_weights.py's extra_special_tokens).
# Gemma4Processor reads image_token, boi_token, eoi_token and (even for images) boa_token, eoa_token, audio_token;
# it adds <|video|> itself.
GEMMA4_EXTRA_SPECIAL_TOKENS = {
    "image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>", "audio_token": "<|audio|>",
    "boa_token": "<|audio>", "eoa_token": "<audio|>", "sot_token": "<|turn>", "eot_token": "<turn|>",
    "soc_token": "<|channel>", "eoc_token": "<channel|>", "think_token": "<|think|>", "escape_token": '<|"|>',
    "str_token": "<|tool_response>", "etr_token": "<tool_response|>", "stc_token": "<|tool_call>",
    "etc_token": "<tool_call|>", "std_token": "<|tool>", "etd_token": "<tool|>",
}
