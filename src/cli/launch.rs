//! `reward-worker launch RECIPE.toml [SERVE FLAGS...]`: start the service from a
//! training recipe (see `recipe`). The recipe becomes `serve` flags; flags
//! after the recipe override them (the last one given wins).

use clap::{Args, CommandFactory, Parser};
use std::path::PathBuf;

use super::serve::{self, ServeArgs};
use crate::recipe::LoadedRecipe;

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// `serve` flags that override the recipe, e.g. `--port 0`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub overrides: Vec<String>,
    /// Check the recipe (keys, types, layout against the model config), print the flags and exit.
    #[arg(long)]
    pub check: bool,
}

/// `serve`'s flags, each allowed more than once (the last wins).
#[derive(Parser, Debug)]
#[command(name = "reward-worker launch", args_override_self = true, no_binary_name = true)]
struct RecipeFlags {
    #[command(flatten)]
    serve: ServeArgs,
}

pub fn run(args: LaunchArgs) -> Result<i32, String> {
    let recipe = LoadedRecipe::read(&args.recipe).map_err(|e| e.to_string())?;
    let mut flags = recipe.to_args();
    if !knows_flag("backend") {
        // A build without the worker group's `--backend`: the recipe is still
        // checked, but only a one-rank recipe can start.
        if let Some(at) = flags.iter().position(|f| f == "--backend") {
            let backend = flags.drain(at..at + 2).nth(1).unwrap_or_default();
            if !args.check {
                return Err(format!(
                    "recipe {}: backend `{backend}` needs the worker group, which this build does not have",
                    args.recipe.display()
                ));
            }
        }
    }
    flags.extend(args.overrides.iter().cloned());
    let mut parsed = RecipeFlags::try_parse_from(&flags)
        .map_err(|e| format!("recipe {} with flags {flags:?}: {e}", args.recipe.display()))?;
    // The [reward] section is a whole config (calibration included), not flags.
    parsed.serve.reward.base = recipe.recipe.reward.clone();
    parsed.serve.reward.config()?;
    if args.check {
        println!("{}", flags.join(" "));
        return Ok(0);
    }
    tracing::info!(recipe = %args.recipe.display(), flags = %flags.join(" "), "launching");
    serve::run(parsed.serve)
}

/// Whether `serve` has the flag `--NAME` in this build.
fn knows_flag(name: &str) -> bool {
    RecipeFlags::command().get_arguments().any(|a| a.get_long() == Some(name))
}
