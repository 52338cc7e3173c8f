//! `Local`: the whole batch goes to the host's `local-model` import in one
//! call, so the host can batch the work on its side.

use crate::batchgen::plugin::local_model::{self, LocalRequest};
use crate::batchgen::plugin::types::{Generation, RowError};
use crate::config::Plan;

pub fn generate(plan: &Plan, inputs: &[String]) -> Vec<Result<Generation, RowError>> {
    let requests: Vec<LocalRequest> = inputs
        .iter()
        .map(|input| LocalRequest {
            model: (!plan.model_id.is_empty()).then(|| plan.model_id.clone()),
            system_prompt: plan.system_prompt.clone(),
            prompt: input.clone(),
            temperature: plan.temperature_value,
            top_p: plan.top_p_value,
            max_tokens: plan.max_tokens,
            json_schema: plan.schema.as_ref().map(|schema| schema.text.clone()),
        })
        .collect();
    let results = local_model::generate(&requests);
    if results.len() != inputs.len() {
        let message = format!("the local model returned {} results for {} requests", results.len(), inputs.len());
        return inputs.iter().map(|_| Err(RowError::Transport(message.clone()))).collect();
    }
    results
        .into_iter()
        .map(|result| {
            let completion = result?;
            // Constrained decoding keeps to the schema, but a reply cut at
            // max_tokens is unfinished JSON: the schema is checked anyway.
            if let Some(schema) = &plan.schema {
                schema.check(&completion.text).map_err(RowError::MalformedReply)?;
            }
            Ok(Generation {
                text: completion.text,
                finish_reason: completion.finish_reason,
                input_tokens: completion.input_tokens,
                output_tokens: completion.output_tokens,
                attempts: 1,
            })
        })
        .collect()
}
