//! `lalora generate`: text from a prompt.

use anyhow::Context;
use clap::Args;
use lalora::chat::ChatTemplate;
use lalora::data::ChatMessage;
use lalora::generate::{generate, SamplingConfig};
use lalora::{LaLoRA, Tokenizer};

use crate::cli::ranges::{at_least_one, mass, non_negative};
use crate::cli::{ModelArgs, B};

/// Flags of `lalora generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt (BOS is added as the tokenizer's post-processor says).
    #[arg(long)]
    prompt: String,
    /// Send the prompt as a user message through the model's chat template (with the
    /// assistant's turn opened); generation also stops at the template's end-of-turn token.
    #[arg(long)]
    chat: bool,
    /// Tokens to generate at most (fewer when the prompt leaves less of the model's context).
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    max_new_tokens: usize,
    /// 0 = greedy; otherwise sample from softmax(logits / temperature).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    temperature: f64,
    /// Nucleus sampling mass in (0, 1] (with --temperature > 0). 1 = no truncation.
    #[arg(long, default_value_t = 1.0, value_parser = mass)]
    top_p: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Recompute every position at each step instead of using the KV cache (slow; for checks).
    #[arg(long)]
    no_cache: bool,
}

/// Runs `lalora generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let device = lalora_backends::device();
    let model_dir = args.model.dir()?;
    let model = LaLoRA::<B>::load_with(&model_dir, args.model.adapters(), args.model.dtype, &device)
        .with_context(|| format!("loading {}", model_dir.display()))?;
    let tokenizer = Tokenizer::for_model(&model_dir, model.model.config.vocab_size)?;
    let mut stop = model.model.config.eos_token_ids.clone();
    let prompt = if args.chat {
        let template = ChatTemplate::from_model_dir(&model_dir)?.with_context(|| {
            format!("--chat: {} has no chat template (tokenizer_config.json or chat_template.jinja)", model_dir.display())
        })?;
        stop.extend(template.special_token("eos_token").and_then(|t| tokenizer.token_id(t)));
        template.prompt_ids(&tokenizer, &[ChatMessage::new("user", args.prompt.clone())])?
    } else {
        tokenizer.encode(&args.prompt)?
    };
    anyhow::ensure!(!prompt.is_empty(), "--prompt tokenises to nothing: there is no token to continue");
    // Prompt and new tokens share the model's context.
    let context = model.model.config.max_position_embeddings;
    anyhow::ensure!(
        prompt.len() < context,
        "--prompt is {} tokens, which fills the model's context ({context}, max_position_embeddings): shorten it",
        prompt.len()
    );
    let max_new_tokens = args.max_new_tokens.min(context - prompt.len());
    if max_new_tokens < args.max_new_tokens {
        eprintln!(
            "note: generating at most {max_new_tokens} tokens: the {}-token prompt leaves that much of the model's {context}-token context",
            prompt.len()
        );
    }
    let config =
        SamplingConfig { max_new_tokens, temperature: args.temperature, top_p: args.top_p, seed: args.seed, use_cache: !args.no_cache };
    let new_tokens = generate(&model.model, &prompt, &config, &stop);
    if args.chat {
        println!("{}", tokenizer.decode(&new_tokens)?);
    } else {
        println!("{}{}", args.prompt, tokenizer.decode(&new_tokens)?);
    }
    Ok(())
}
