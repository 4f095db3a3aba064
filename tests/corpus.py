"""A corpus of real models that train at their own initialization, for tests to audit.

``CORPUS`` maps a short name to a zero-argument builder that returns ``(model, example_input)``,
where ``model(example_input)`` runs: token ids of shape ``(4, 16)`` for text models, pixel values
of shape ``(4, 3, H, W)`` for vision models, float features for the hand-written models. The
models are:

- Hugging Face ``transformers`` architectures built from small configs with the library's own
  model classes, so that ``post_init`` gives them exactly the library's init: text decoders,
  encoders, encoder-decoders (wrapped in :class:`Seq2Seq`, which feeds the ids to both sides)
  and vision models;
- PEFT LoRA adapters at PEFT's own init (B at zero) on GPT-2 and Llama;
- PyTorch's ``nn.TransformerEncoder``, an LSTM (forget-gate bias 1) and a GRU sequence model;
- hand-written residual designs known to train from their init: Fixup (Zhang et al. 2019),
  ReZero (Bachlechner et al. 2020), a ConvNeXt block with layer scale 1e-6 (Liu et al. 2022)
  and a normalizer-free block with SkipInit (Brock et al. 2021; De & Smith 2020).

``FAULTS`` maps a name to a builder of one of those models with a planted fault, returning
``(model, example_input, expected_code, expected_location_substring)``.

Every builder seeds ``torch.manual_seed(0)`` first and is deterministic. Nothing is downloaded:
every Hugging Face model is built from a config object.
"""

import logging
import math
import os
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import torch
import transformers
from torch import nn

transformers.logging.set_verbosity_error()
# importing some modeling files probes for flash-attention kernels on the Hub, and says so offline
logging.getLogger("kernels").setLevel(logging.ERROR)

BATCH, SEQ, VOCAB, IMAGE, LABELS = 4, 16, 96, 32, 10

Builder = Callable[[], tuple[nn.Module, Any]]
FaultBuilder = Callable[[], tuple[nn.Module, Any, str, str]]


# --------------------------------------------------------------------------- inputs

def token_ids(vocab: int = VOCAB) -> torch.Tensor:
    """Token ids ``(BATCH, SEQ)`` in ``[3, vocab)``: clear of the usual pad/bos/eos ids 0-2."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, vocab, (BATCH, SEQ), generator=generator)


def pixels(size: int = IMAGE, channels: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, channels, size, size, generator=generator)


def features(*shape: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, *shape, generator=generator)


# --------------------------------------------------------------------------- Hugging Face

def hf_model(class_name: str, config_name: str, **config: Any) -> nn.Module:
    """``transformers.<class_name>(transformers.<config_name>(**config))``, seeded: the model
    class's constructor runs ``post_init``, the library's own initialization."""
    torch.manual_seed(0)
    return getattr(transformers, class_name)(getattr(transformers, config_name)(**config))


class Seq2Seq(nn.Module):
    """An encoder-decoder called with one tensor: the ids go to both the encoder and the
    decoder (teacher forcing on the same sequence); returns the logits. The Hugging Face
    model is ``self.model``, so parameter names are ``model.<its names>``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, decoder_input_ids=ids).logits


def text(class_name: str, config_name: str, seq2seq: bool = False, **config: Any) -> Builder:
    """Builder of a text model fed ``token_ids()``; ``seq2seq`` wraps it in :class:`Seq2Seq`."""
    vocab = config.get("vocab_size", VOCAB)

    def build():
        model = hf_model(class_name, config_name, **config)
        return (Seq2Seq(model) if seq2seq else model), token_ids(vocab)

    return build


def vision(class_name: str, config_name: str, size: int = IMAGE, **config: Any) -> Builder:
    """Builder of an image classifier fed ``pixels(size)``."""

    def build():
        return hf_model(class_name, config_name, num_labels=LABELS, **config), pixels(size)

    return build


# the common small sizes, in the names each family of configs uses
LLAMA_LIKE = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
BERT_LIKE = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 64}
GPT2_LIKE = {"vocab_size": VOCAB, "n_embd": 32, "n_inner": 64, "n_layer": 2, "n_head": 4, "n_positions": 64}
BART_LIKE = {"vocab_size": VOCAB, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
             "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64,
             "decoder_ffn_dim": 64, "max_position_embeddings": 64}
T5_LIKE = {"vocab_size": VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
           "num_heads": 4, "decoder_start_token_id": 0}
VIT_LIKE = {"image_size": IMAGE, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64}

DECODERS: dict[str, Builder] = {
    "hf-gpt2": text("GPT2LMHeadModel", "GPT2Config", **GPT2_LIKE),
    "hf-openai-gpt": text("OpenAIGPTLMHeadModel", "OpenAIGPTConfig", vocab_size=VOCAB, n_embd=32,
                          n_layer=2, n_head=4, n_positions=64),
    "hf-gpt-neo": text("GPTNeoForCausalLM", "GPTNeoConfig", vocab_size=VOCAB, hidden_size=32,
                       intermediate_size=64, num_layers=2, num_heads=4, max_position_embeddings=64,
                       attention_types=[[["global", "local"], 1]], window_size=8),
    "hf-gptj": text("GPTJForCausalLM", "GPTJConfig", rotary_dim=4, **GPT2_LIKE),
    "hf-gpt-neox": text("GPTNeoXForCausalLM", "GPTNeoXConfig", **BERT_LIKE),
    "hf-gpt-bigcode": text("GPTBigCodeForCausalLM", "GPTBigCodeConfig", **GPT2_LIKE),
    "hf-codegen": text("CodeGenForCausalLM", "CodeGenConfig", rotary_dim=4, n_ctx=64, **GPT2_LIKE),
    "hf-llama": text("LlamaForCausalLM", "LlamaConfig", **LLAMA_LIKE),
    "hf-mistral": text("MistralForCausalLM", "MistralConfig", **LLAMA_LIKE),
    "hf-mixtral": text("MixtralForCausalLM", "MixtralConfig", num_local_experts=4,
                       num_experts_per_tok=2, **LLAMA_LIKE),
    "hf-qwen2": text("Qwen2ForCausalLM", "Qwen2Config", **LLAMA_LIKE),
    "hf-qwen3": text("Qwen3ForCausalLM", "Qwen3Config", head_dim=8, **LLAMA_LIKE),
    "hf-qwen2-moe": text("Qwen2MoeForCausalLM", "Qwen2MoeConfig", num_experts=4, num_experts_per_tok=2,
                         moe_intermediate_size=32, shared_expert_intermediate_size=32, **LLAMA_LIKE),
    "hf-gemma": text("GemmaForCausalLM", "GemmaConfig", head_dim=8, **LLAMA_LIKE),
    "hf-gemma2": text("Gemma2ForCausalLM", "Gemma2Config", head_dim=8, sliding_window=8, **LLAMA_LIKE),
    "hf-phi": text("PhiForCausalLM", "PhiConfig", **LLAMA_LIKE),
    "hf-phi3": text("Phi3ForCausalLM", "Phi3Config", pad_token_id=0, **LLAMA_LIKE),
    "hf-falcon": text("FalconForCausalLM", "FalconConfig", vocab_size=VOCAB, hidden_size=32,
                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64),
    "hf-opt": text("OPTForCausalLM", "OPTConfig", vocab_size=VOCAB, hidden_size=32, ffn_dim=64,
                   num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32,
                   max_position_embeddings=64),
    "hf-bloom": text("BloomForCausalLM", "BloomConfig", vocab_size=VOCAB, hidden_size=32, n_layer=2,
                     n_head=4),
    "hf-mpt": text("MptForCausalLM", "MptConfig", vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2,
                   expansion_ratio=2, max_seq_len=64),
    "hf-stablelm": text("StableLmForCausalLM", "StableLmConfig", **LLAMA_LIKE),
    "hf-olmo": text("OlmoForCausalLM", "OlmoConfig", pad_token_id=0, **LLAMA_LIKE),
    "hf-olmo2": text("Olmo2ForCausalLM", "Olmo2Config", pad_token_id=0, **LLAMA_LIKE),
    "hf-starcoder2": text("Starcoder2ForCausalLM", "Starcoder2Config", **LLAMA_LIKE),
    "hf-granite": text("GraniteForCausalLM", "GraniteConfig", **LLAMA_LIKE),
    "hf-cohere": text("CohereForCausalLM", "CohereConfig", pad_token_id=0, **LLAMA_LIKE),
    "hf-persimmon": text("PersimmonForCausalLM", "PersimmonConfig", **BERT_LIKE),
    "hf-xglm": text("XGLMForCausalLM", "XGLMConfig", vocab_size=VOCAB, d_model=32, ffn_dim=64,
                    num_layers=2, attention_heads=4, max_position_embeddings=64),
    "hf-biogpt": text("BioGptForCausalLM", "BioGptConfig", **BERT_LIKE),
}

ENCODERS: dict[str, Builder] = {
    "hf-bert": text("BertForMaskedLM", "BertConfig", **BERT_LIKE),
    "hf-roberta": text("RobertaForMaskedLM", "RobertaConfig", **BERT_LIKE),
    "hf-xlm-roberta": text("XLMRobertaForMaskedLM", "XLMRobertaConfig", **BERT_LIKE),
    "hf-camembert": text("CamembertForMaskedLM", "CamembertConfig", **BERT_LIKE),
    "hf-distilbert": text("DistilBertForMaskedLM", "DistilBertConfig", vocab_size=VOCAB, dim=32,
                          hidden_dim=64, n_layers=2, n_heads=4, max_position_embeddings=64),
    "hf-albert": text("AlbertForMaskedLM", "AlbertConfig", embedding_size=16, **BERT_LIKE),
    "hf-electra": text("ElectraForMaskedLM", "ElectraConfig", embedding_size=16, **BERT_LIKE),
    "hf-deberta": text("DebertaForMaskedLM", "DebertaConfig", **BERT_LIKE),
    "hf-deberta-v2": text("DebertaV2ForMaskedLM", "DebertaV2Config", **BERT_LIKE),
    "hf-mpnet": text("MPNetForMaskedLM", "MPNetConfig", **BERT_LIKE),
    "hf-convbert": text("ConvBertForMaskedLM", "ConvBertConfig", embedding_size=32, **BERT_LIKE),
    "hf-roformer": text("RoFormerForMaskedLM", "RoFormerConfig", embedding_size=32, **BERT_LIKE),
    "hf-megatron-bert": text("MegatronBertForMaskedLM", "MegatronBertConfig", **BERT_LIKE),
    "hf-mobilebert": text("MobileBertForMaskedLM", "MobileBertConfig", embedding_size=16,
                          intra_bottleneck_size=32, true_hidden_size=32, num_feedforward_networks=2,
                          **BERT_LIKE),
    "hf-squeezebert": text("SqueezeBertForMaskedLM", "SqueezeBertConfig", embedding_size=32,
                           **BERT_LIKE),
    "hf-ernie": text("ErnieForMaskedLM", "ErnieConfig", **BERT_LIKE),
    "hf-nystromformer": text("NystromformerForMaskedLM", "NystromformerConfig", num_landmarks=4,
                             segment_means_seq_len=SEQ, **BERT_LIKE),
    "hf-esm": text("EsmForMaskedLM", "EsmConfig", pad_token_id=1, mask_token_id=2, **BERT_LIKE),
    "hf-modernbert": text("ModernBertForMaskedLM", "ModernBertConfig", pad_token_id=0, bos_token_id=1,
                          eos_token_id=2, cls_token_id=1, sep_token_id=2, global_attn_every_n_layers=2,
                          local_attention=8, **BERT_LIKE),
    "hf-big-bird": text("BigBirdForMaskedLM", "BigBirdConfig", attention_type="original_full",
                        **BERT_LIKE),
}

ENCODER_DECODERS: dict[str, Builder] = {
    "hf-t5": text("T5ForConditionalGeneration", "T5Config", seq2seq=True, **T5_LIKE),
    "hf-mt5": text("MT5ForConditionalGeneration", "MT5Config", seq2seq=True, **T5_LIKE),
    "hf-bart": text("BartForConditionalGeneration", "BartConfig", seq2seq=True, **BART_LIKE),
    "hf-mbart": text("MBartForConditionalGeneration", "MBartConfig", seq2seq=True, **BART_LIKE),
    "hf-pegasus": text("PegasusForConditionalGeneration", "PegasusConfig", seq2seq=True, **BART_LIKE),
    "hf-marian": text("MarianMTModel", "MarianConfig", seq2seq=True, pad_token_id=1, eos_token_id=2,
                      decoder_start_token_id=1, decoder_vocab_size=VOCAB, **BART_LIKE),
    "hf-blenderbot": text("BlenderbotForConditionalGeneration", "BlenderbotConfig", seq2seq=True,
                          **BART_LIKE),
    "hf-blenderbot-small": text("BlenderbotSmallForConditionalGeneration", "BlenderbotSmallConfig",
                                seq2seq=True, **BART_LIKE),
    "hf-plbart": text("PLBartForConditionalGeneration", "PLBartConfig", seq2seq=True, **BART_LIKE),
    # M2M100 alone defaults to LayerDrop 0.05, which skips whole layers in training mode
    "hf-m2m100": text("M2M100ForConditionalGeneration", "M2M100Config", seq2seq=True,
                      encoder_layerdrop=0.0, decoder_layerdrop=0.0, **BART_LIKE),
}

VISION: dict[str, Builder] = {
    "hf-vit": vision("ViTForImageClassification", "ViTConfig", **VIT_LIKE),
    "hf-deit": vision("DeiTForImageClassification", "DeiTConfig", **VIT_LIKE),
    "hf-beit": vision("BeitForImageClassification", "BeitConfig", **VIT_LIKE),
    "hf-data2vec-vision": vision("Data2VecVisionForImageClassification", "Data2VecVisionConfig",
                                 **VIT_LIKE),
    "hf-dinov2": vision("Dinov2ForImageClassification", "Dinov2Config", **VIT_LIKE),
    "hf-swin": vision("SwinForImageClassification", "SwinConfig", image_size=IMAGE, patch_size=4,
                      embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4),
    "hf-swinv2": vision("Swinv2ForImageClassification", "Swinv2Config", image_size=IMAGE, patch_size=4,
                        embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4),
    "hf-convnext": vision("ConvNextForImageClassification", "ConvNextConfig", num_stages=2,
                          hidden_sizes=[16, 32], depths=[1, 1]),
    "hf-convnextv2": vision("ConvNextV2ForImageClassification", "ConvNextV2Config", num_stages=2,
                            hidden_sizes=[16, 32], depths=[1, 1]),
    "hf-resnet": vision("ResNetForImageClassification", "ResNetConfig", embedding_size=16,
                        hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
    "hf-regnet": vision("RegNetForImageClassification", "RegNetConfig", embedding_size=16,
                        hidden_sizes=[16, 32], depths=[1, 1], groups_width=8),
    "hf-bit": vision("BitForImageClassification", "BitConfig", embedding_size=16,
                     hidden_sizes=[16, 32], depths=[1, 1], num_groups=4),
    "hf-efficientnet": vision("EfficientNetForImageClassification", "EfficientNetConfig",
                              image_size=IMAGE, width_coefficient=0.5, depth_coefficient=1.0,
                              kernel_sizes=[3, 3, 5, 3], in_channels=[32, 16, 24, 40],
                              out_channels=[16, 24, 40, 80], strides=[1, 2, 2, 2],
                              num_block_repeats=[1, 1, 1, 1], expand_ratios=[1, 6, 6, 6],
                              hidden_dim=640),  # hidden_dim must be round_filters(1280)
    "hf-mobilenet-v1": vision("MobileNetV1ForImageClassification", "MobileNetV1Config",
                              image_size=IMAGE, depth_multiplier=0.25, min_depth=8),
    "hf-mobilenet-v2": vision("MobileNetV2ForImageClassification", "MobileNetV2Config",
                              image_size=IMAGE, depth_multiplier=0.25, min_depth=8),
    "hf-mobilevit": vision("MobileViTForImageClassification", "MobileViTConfig", size=64, image_size=64,
                           hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
                           num_attention_heads=4),
    "hf-mobilevitv2": vision("MobileViTV2ForImageClassification", "MobileViTV2Config", size=64,
                             image_size=64, width_multiplier=0.25, n_attn_blocks=[1, 1, 1]),
    "hf-levit": vision("LevitForImageClassification", "LevitConfig", size=64, image_size=64,
                       hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4], depths=[1, 1, 1],
                       key_dim=[8, 8, 8], down_ops=[["Subsample", 8, 2, 4, 2, 2],
                                                    ["Subsample", 8, 3, 4, 2, 2]]),
    "hf-poolformer": vision("PoolFormerForImageClassification", "PoolFormerConfig",
                            num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32],
                            patch_sizes=[7, 3], strides=[4, 2], padding=[2, 1]),
    "hf-segformer": vision("SegformerForImageClassification", "SegformerConfig", num_encoder_blocks=2,
                           depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                           strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2]),
    # stage i indexes its drop-path schedule by i, so CvT needs depth[i] > i
    "hf-cvt": vision("CvtForImageClassification", "CvtConfig", embed_dim=[16, 32, 48],
                     num_heads=[1, 2, 4], depth=[1, 2, 3]),
    "hf-focalnet": vision("FocalNetForImageClassification", "FocalNetConfig", image_size=IMAGE,
                          embed_dim=16, hidden_sizes=[32, 64], depths=[1, 1], focal_levels=[2, 2],
                          focal_windows=[3, 3]),
    "hf-pvt": vision("PvtForImageClassification", "PvtConfig", image_size=IMAGE, num_encoder_blocks=2,
                     depths=[1, 1], sequence_reduction_ratios=[2, 1], hidden_sizes=[16, 32],
                     patch_sizes=[4, 2], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2]),
    "hf-pvt-v2": vision("PvtV2ForImageClassification", "PvtV2Config", image_size=IMAGE,
                        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                        mlp_ratios=[2, 2]),
    "hf-swiftformer": vision("SwiftFormerForImageClassification", "SwiftFormerConfig", image_size=IMAGE,
                             depths=[1, 1, 1, 1], embed_dims=[16, 16, 32, 32]),
    "hf-hiera": vision("HieraForImageClassification", "HieraConfig", size=64, image_size=[64, 64],
                       embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2]),
}


# --------------------------------------------------------------------------- PEFT

def lora(base: Builder, targets: list, **options: Any) -> Builder:
    """Builder of ``base`` wrapped in a LoRA adapter at PEFT's own init (B at zero)."""

    def build():
        model, x = base()
        torch.manual_seed(0)
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), task_type="CAUSAL_LM",
                                 **options)
        return peft.get_peft_model(model, config), x

    return build


# --------------------------------------------------------------------------- PyTorch

class EncoderClassifier(nn.Module):
    """``nn.TransformerEncoder`` on float inputs ``(batch, seq, d_model)``, then a Linear head."""

    def __init__(self, d_model: int = 32, heads: int = 4, layers: int = 2, classes: int = LABELS):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class RecurrentLM(nn.Module):
    """Embedding -> LSTM or GRU -> Linear over the vocabulary, one prediction per step."""

    def __init__(self, rnn: type, vocab: int = VOCAB, width: int = 32, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = rnn(width, width, num_layers=layers, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(ids))[0])


def set_forget_bias(lstm: nn.LSTM, value: float = 1.0) -> None:
    """Forget gate (gates i, f, g, o: slice [H:2H]) of ``bias_ih`` to ``value``, of ``bias_hh`` to 0,
    so that the effective forget bias, their sum, is ``value`` (Jozefowicz et al. 2015)."""
    hidden = lstm.hidden_size
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("bias_"):
                p[hidden:2 * hidden].fill_(value if name.startswith("bias_ih") else 0.0)


def build_transformer_encoder():
    torch.manual_seed(0)
    return EncoderClassifier(), features(SEQ, 32)


def build_lstm():
    torch.manual_seed(0)
    model = RecurrentLM(nn.LSTM)
    set_forget_bias(model.rnn)
    return model, token_ids()


def build_gru():
    torch.manual_seed(0)
    return RecurrentLM(nn.GRU), token_ids()


# --------------------------------------------------------------------------- hand-written residual designs

class Scalar(nn.Module):
    """One learnable scalar, multiplied (``mode="scale"``) or added (``mode="bias"``)."""

    def __init__(self, value: float, mode: str):
        super().__init__()
        self.value = nn.Parameter(torch.full((1,), float(value)))
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.value if self.mode == "scale" else x + self.value


class FixupBlock(nn.Module):
    """Fixup residual MLP block (Zhang et al. 2019), m = 2 layers in the branch: scalar biases
    before each layer and activation, the first layer He-initialized and scaled by
    L^(-1/(2m-2)) = L^(-1/2), the last layer zero, a scalar multiplier initialized to 1."""

    def __init__(self, width: int, blocks: int):
        super().__init__()
        self.bias1a, self.bias1b = Scalar(0, "bias"), Scalar(0, "bias")
        self.bias2a, self.bias2b = Scalar(0, "bias"), Scalar(0, "bias")
        self.fc1 = nn.Linear(width, width, bias=False)
        self.fc2 = nn.Linear(width, width, bias=False)
        self.scale = Scalar(1, "scale")
        self.act = nn.ReLU()
        m = 2
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        with torch.no_grad():
            self.fc1.weight.mul_(blocks ** (-1.0 / (2 * m - 2)))
        nn.init.zeros_(self.fc2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bias1b(self.fc1(self.bias1a(x))))
        out = self.bias2b(self.scale(self.fc2(self.bias2a(out))))
        return self.act(x + out)


class FixupMLP(nn.Module):
    """Stem, ``blocks`` Fixup blocks, and a zero-initialized classifier, as in Fixup."""

    def __init__(self, inputs: int = 32, width: int = 64, blocks: int = 4, classes: int = LABELS):
        super().__init__()
        self.stem = nn.Linear(inputs, width)
        nn.init.kaiming_normal_(self.stem.weight, nonlinearity="relu")
        nn.init.zeros_(self.stem.bias)
        self.act = nn.ReLU()
        self.blocks = nn.Sequential(*[FixupBlock(width, blocks) for _ in range(blocks)])
        self.head_bias = Scalar(0, "bias")
        self.head = nn.Linear(width, classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_bias(self.blocks(self.act(self.stem(x)))))


class ReZeroLayer(nn.Module):
    """A transformer layer without norms, each sublayer added as ``x + alpha * f(x)`` with one
    scalar ``alpha`` per layer initialized to 0 (ReZero, Bachlechner et al. 2020)."""

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.alpha * self.attn(x, x, x, need_weights=False)[0]
        return x + self.alpha * self.ffn(x)


class ReZeroTransformer(nn.Module):
    def __init__(self, width: int = 32, layers: int = 4, classes: int = LABELS):
        super().__init__()
        self.layers = nn.Sequential(*[ReZeroLayer(width, 4, 2 * width) for _ in range(layers)])
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


class ChannelsLastNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, Linear 4x expansion, GELU, Linear back, scaled by a layer
    scale ``gamma = 1e-6 * ones(C)`` and added to the input (Liu et al. 2022)."""

    def __init__(self, channels: int):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(1e-6 * torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """Patchify stem, ConvNeXt blocks, global average pool, LayerNorm, Linear head; convs and
    Linears truncated-normal with std 0.02 and zero biases, as in the paper's code."""

    def __init__(self, channels: int = 32, blocks: int = 2, classes: int = LABELS):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 4, stride=4), ChannelsLastNorm(channels))
        self.blocks = nn.Sequential(*[ConvNeXtBlock(channels) for _ in range(blocks)])
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.stem(x)).mean(dim=(2, 3))))


class ScaledStdConv2d(nn.Conv2d):
    """Conv2d with scaled weight standardization (Brock et al. 2021): the weight is standardized
    per output channel, scaled by 1/sqrt(fan_in) and by a learnable gain initialized to 1."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels))
        self.fan_in = self.weight[0].numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var * self.fan_in + 1e-4) * self.gain.view(-1, 1, 1, 1)
        return self._conv_forward(x, w, self.bias)


class GammaReLU(nn.Module):
    """ReLU scaled by sqrt(2 / (1 - 1/pi)) to preserve the variance of a unit Gaussian input."""

    GAMMA = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * self.GAMMA


class NFBlock(nn.Module):
    """Normalizer-free residual block: ``x + alpha * skipinit_gain * f(x / beta)`` with
    ``alpha = 0.2``, ``beta`` the expected std of the input and ``skipinit_gain`` a learnable
    scalar initialized to 0 (SkipInit, De & Smith 2020)."""

    def __init__(self, channels: int, beta: float, alpha: float = 0.2):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.act1, self.act2 = GammaReLU(), GammaReLU()
        self.conv1 = ScaledStdConv2d(channels, channels, 3, padding=1)
        self.conv2 = ScaledStdConv2d(channels, channels, 3, padding=1)
        self.skipinit_gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.act2(self.conv1(self.act1(x / self.beta))))
        return x + self.alpha * self.skipinit_gain * out


class NFNet(nn.Module):
    def __init__(self, channels: int = 16, blocks: int = 3, alpha: float = 0.2, classes: int = LABELS):
        super().__init__()
        self.stem = ScaledStdConv2d(3, channels, 3, stride=2, padding=1)
        # the variance grows by alpha^2 per block: beta_i = sqrt(1 + i alpha^2)
        self.blocks = nn.Sequential(*[NFBlock(channels, math.sqrt(1 + i * alpha ** 2), alpha)
                                      for i in range(blocks)])
        self.act = GammaReLU()
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.blocks(self.stem(x))).mean(dim=(2, 3)))


def default_mlp() -> nn.Module:
    """The tutorial MLP: three hidden ReLU layers at PyTorch's default init (std 1/sqrt(3 fan_in),
    1/sqrt(6) of He's): its signal shrinks about 15x, which it survives (the trainability
    benchmark's defaults range trains such MLPs up to 8 layers)."""
    return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, LABELS))


def default_cnn() -> nn.Module:
    """Four ReLU convolutions at PyTorch's default init, global average pooling, a linear head."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, LABELS))


def conv_autoencoder() -> nn.Module:
    """A convolutional autoencoder at PyTorch's default init, transposed convolutions back up to
    a sigmoid image."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.ConvTranspose2d(16, 3, 4, stride=2, padding=1), nn.Sigmoid())


def handwritten(cls: type, make_input: Callable[[], torch.Tensor]) -> Builder:
    def build():
        torch.manual_seed(0)
        return cls(), make_input()

    return build


TORCH: dict[str, Builder] = {
    "torch-transformer-encoder": build_transformer_encoder,
    "torch-lstm": build_lstm,
    "torch-gru": build_gru,
    "fixup-mlp": handwritten(FixupMLP, lambda: features(32)),
    "rezero-transformer": handwritten(ReZeroTransformer, lambda: features(SEQ, 32)),
    "convnext-layer-scale": handwritten(ConvNeXt, pixels),
    "nfnet-skipinit": handwritten(NFNet, pixels),
    # what most users write first, at PyTorch's own default init
    "torch-default-mlp": handwritten(default_mlp, lambda: features(32)),
    "torch-default-cnn": handwritten(default_cnn, pixels),
    "torch-conv-autoencoder": handwritten(conv_autoencoder, pixels),
}

PEFT: dict[str, Builder] = {
    # GPT-2's projections are Conv1D, whose weight is stored (in, out): fan_in_fan_out=True
    "peft-lora-gpt2": lora(DECODERS["hf-gpt2"], ["c_attn"], fan_in_fan_out=True),
    "peft-lora-llama": lora(DECODERS["hf-llama"], ["q_proj", "v_proj"]),
}

CORPUS: dict[str, Builder] = {**DECODERS, **ENCODERS, **ENCODER_DECODERS, **VISION, **PEFT, **TORCH}

# models of the corpus whose own init, in the transformers the tests install, is measured to
# harm training: their warnings are true, and --fix changes them (benchmarks/fix_norm_gains.py)
HARMED_AT_OWN_INIT: dict[str, str] = {
    "hf-mobilevit": "transformers 5 draws its BatchNorm gains N(0, 0.02); --fix scales them to unit output variance",
    "hf-mobilevitv2": "transformers 5 draws its BatchNorm gains N(0, 0.02); --fix scales them to unit output variance",
}


# --------------------------------------------------------------------------- planted faults

def vit_zero_patch_embedding():
    """The patch embedding of a ViT zeroed: the output does not depend on the image at init,
    but the projection's own gradient is not zero, so it moves at the first step (such a ViT
    trains in the trainability benchmark, index 525): not a fault, a finding for information."""
    model, x = CORPUS["hf-vit"]()
    nn.init.zeros_(model.vit.embeddings.patch_embeddings.projection.weight)
    return model, x, "IA101", "patch_embeddings.projection"


def resnet_zero_stem():
    """The stem conv of a ResNet zeroed: everything below the first block is cut off."""
    model, x = CORPUS["hf-resnet"]()
    nn.init.zeros_(model.resnet.embedder.embedder.convolution.weight)
    return model, x, "IA101", "embedder.embedder.convolution"


def gpt2_shared_mlp():
    """GPT-2's second block reuses the first block's MLP: one layer where two were meant."""
    model, x = CORPUS["hf-gpt2"]()
    model.transformer.h[1].mlp = model.transformer.h[0].mlp
    return model, x, "IA401", "h.0.mlp"


def lstm_forget_in_name():
    """The popular recipe: zero the biases, then set the forget bias where ``'forget' in name``,
    which no PyTorch parameter name contains, so the forget bias stays at zero."""
    torch.manual_seed(0)
    model = RecurrentLM(nn.LSTM)
    hidden = model.rnn.hidden_size
    for name, p in model.rnn.named_parameters():
        if "bias" in name:
            nn.init.zeros_(p)
            if "forget" in name:
                with torch.no_grad():
                    p[hidden:2 * hidden].fill_(1.0)
    return model, token_ids(), "IA501", "rnn.bias"


def zero_norm_gains(model: nn.Module, suffix: str) -> None:
    """Zero the gain of every module whose class name ends with ``suffix``, as the generic loop
    ``xavier_ if p.dim() > 1 else zeros_`` does."""
    for module in model.modules():
        if type(module).__name__.endswith(suffix):
            nn.init.zeros_(module.weight)


def llama_zero_norms():
    """Every RMSNorm gain of a Llama (``LlamaRMSNorm``, the library's own class) zeroed. The final
    norm moves at step 1 and the attention sides train from step 3, but each MLP's input is
    exactly zero, where the SwiGLU product ``silu(gate(n)) * up(n)`` passes no gradient to ``n``
    at all: its norm's gain and the MLP never move, at any step."""
    model, x = CORPUS["hf-llama"]()
    zero_norm_gains(model, "RMSNorm")
    return model, x, "IA601", "post_attention_layernorm"


def bert_zero_norms():
    """Every LayerNorm gain of a BERT (post-LN) zeroed: the embeddings' norm outputs its bias
    alone whatever the input, every block's sum goes through another zero gain, and no step
    brings the input back (the trainability benchmark's BERT with zero gains does not train)."""
    model, x = CORPUS["hf-bert"]()
    zero_norm_gains(model, "LayerNorm")
    return model, x, "IA601", "embeddings.LayerNorm"


FAULTS: dict[str, FaultBuilder] = {
    "hf-resnet-zero-stem": resnet_zero_stem,
    "hf-gpt2-shared-mlp": gpt2_shared_mlp,
    "torch-lstm-forget-in-name": lstm_forget_in_name,
    "hf-llama-zero-norms": llama_zero_norms,
    "hf-bert-zero-norms": bert_zero_norms,
}
