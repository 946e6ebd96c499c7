//! Examples -> padded tensors. Sequences are right-padded for training (prompts are left-padded
//! for generation, elsewhere); masks say which positions are real and which are learned.
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Prompt + response sequences, right-padded.
#[derive(Debug)]
pub struct SequenceBatch {
    /// (B, T)
    pub input_ids: Tensor,
    /// (B, T): 1 on real tokens.
    pub attention_mask: Tensor,
    /// (B, T): 1 on response tokens (the ones a loss learns).
    pub loss_mask: Tensor,
}

/// Token ids of prompt + response (+ EOS unless a chat template ended the turn), at most `max_length`: the prompt loses its start
/// first, then the response its end.
pub fn join(
    tok: &Tokenizer,
    prompt: &str,
    response: &str,
    max_length: usize,
) -> Result<(Vec<i64>, usize)> {
    let mut p: Vec<i64> = tok.encode(prompt)?.into_iter().map(i64::from).collect();
    let mut r: Vec<i64> = tok
        .encode_continuation(response)?
        .into_iter()
        .map(i64::from)
        .collect();
    r.extend(tok.eos_after_response().map(i64::from));
    r.truncate(max_length.saturating_sub(1).max(1));
    let room = max_length - r.len();
    if p.len() > room {
        p.drain(..p.len() - room);
    }
    let prompt_len = p.len();
    p.extend(r);
    Ok((p, prompt_len))
}

/// Right-pads `(ids, prompt_len)` pairs into a batch on `device`.
pub fn pad(rows: &[(Vec<i64>, usize)], pad_id: i64, device: Device) -> SequenceBatch {
    let t = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1);
    let (mut ids, mut attn, mut learn) = (Vec::new(), Vec::new(), Vec::new());
    for (row, prompt_len) in rows {
        for i in 0..t {
            ids.push(row.get(i).copied().unwrap_or(pad_id));
            attn.push(i64::from(i < row.len()));
            learn.push(i64::from(i >= *prompt_len && i < row.len()));
        }
    }
    let shape = [rows.len() as i64, t as i64];
    let tensor = |v: Vec<i64>| Tensor::from_slice(&v).view(shape).to_device(device);
    SequenceBatch {
        input_ids: tensor(ids),
        attention_mask: tensor(attn),
        loss_mask: tensor(learn).to_kind(Kind::Float),
    }
}

#[cfg(test)]
mod tests {
    use rlhf_spec::{BuiltinTokenizer, ResolvedTokenizer};

    use super::*;

    #[test]
    fn join_ends_with_eos_and_truncates_the_prompt_first() {
        let tok = Tokenizer::load(&ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2)).unwrap();
        let (ids, prompt_len) = join(&tok, "copy: cat dog =>", " cat dog.", 64).unwrap();
        let prompt: Vec<i64> = tok
            .encode("copy: cat dog =>")
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(&ids[..prompt_len], &prompt[..]);
        assert_eq!(*ids.last().unwrap(), 50256);
        let (short, short_prompt) = join(&tok, "copy: cat dog =>", " cat dog.", 6).unwrap();
        assert_eq!(short.len(), 6);
        assert_eq!(
            &short[short_prompt..],
            &ids[prompt_len..],
            "the whole response survives"
        );
        assert_eq!(
            &short[..short_prompt],
            &prompt[prompt.len() - short_prompt..],
            "the prompt keeps its end"
        );
    }

    #[test]
    fn pads_right_and_marks_responses() {
        let b = pad(&[(vec![5, 6, 7], 2), (vec![8, 9], 1)], 0, Device::Cpu);
        assert_eq!(
            Vec::<i64>::try_from(b.input_ids.view([-1])).unwrap(),
            [5, 6, 7, 8, 9, 0]
        );
        assert_eq!(
            Vec::<i64>::try_from(b.attention_mask.view([-1])).unwrap(),
            [1, 1, 1, 1, 1, 0]
        );
        assert_eq!(
            Vec::<f32>::try_from(b.loss_mask.view([-1])).unwrap(),
            [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
        );
    }
}
