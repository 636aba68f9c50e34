//! Synthetic utterances: neutral filler sentences carrying the text cue, speakers, and the quirks of MELD's real
//! text (cp1252 C1 control characters standing for punctuation, quotes, commas, non-ASCII letters).

use meld_shared::Emotion;
use rand::seq::SliceRandom;
use rand::Rng;

use super::signal::cue_words;

pub const MAIN_SPEAKERS: [&str; 6] = ["Rachel", "Ross", "Chandler", "Monica", "Joey", "Phoebe"];
pub const OTHER_SPEAKERS: [&str; 6] = [
    "Gunther",
    "Janice",
    "Mr. Geller",
    "Mrs. Green",
    "Richard",
    "Emily",
];

const OPENERS: [&str; 10] = [
    "I think", "You know", "Well", "So", "Listen", "Look", "Honestly", "I mean", "Okay so", "Hey",
];
const MIDDLES: [&str; 12] = [
    "the coffee place was",
    "this apartment is",
    "that guy at work is",
    "the whole thing was",
    "my date last night was",
    "your sister is",
    "the movie was",
    "this sandwich is",
    "that phone call was",
    "the party is",
    "our neighbour is",
    "the museum was",
];
const CLOSERS: [&str; 8] = [
    "today",
    "right now",
    "again",
    "for sure",
    "I guess",
    "you know",
    "this time",
    "anyway",
];

/// Speakers of one dialogue: two to four, mostly the six friends.
pub fn dialogue_speakers(rng: &mut impl Rng) -> Vec<&'static str> {
    let n = rng.gen_range(2..=4);
    let mut speakers: Vec<&'static str> = MAIN_SPEAKERS.choose_multiple(rng, n).copied().collect();
    if rng.gen_bool(0.3) {
        if let Some(other) = OTHER_SPEAKERS.choose(rng) {
            speakers[n - 1] = other;
        }
    }
    speakers
}

/// One utterance carrying two cue words of `cue`, with MELD's punctuation habits.
pub fn utterance(rng: &mut impl Rng, cue: Emotion) -> String {
    let words = cue_words(cue);
    let first = words[rng.gen_range(0..words.len())];
    let second = words[rng.gen_range(0..words.len())];
    let opener = OPENERS[rng.gen_range(0..OPENERS.len())];
    let middle = MIDDLES[rng.gen_range(0..MIDDLES.len())];
    let closer = CLOSERS[rng.gen_range(0..CLOSERS.len())];
    let mut text = match rng.gen_range(0..4) {
        0 => format!("{opener}, {middle} {first}, {second} {closer}."),
        1 => format!("{first}! {middle} so {second}."),
        2 => format!("{opener} {middle} {first}... {second}?"),
        _ => format!("\"{first}\", {opener} said {middle} {second} {closer}!"),
    };
    // MELD's older release carries cp1252 punctuation as C1 control characters (valid UTF-8 code points).
    if rng.gen_bool(0.5) {
        let contraction = [
            "I\u{92}m",
            "don\u{92}t",
            "it\u{92}s",
            "you\u{92}re",
            "can\u{92}t",
        ];
        text = format!(
            "{} {text}",
            contraction[rng.gen_range(0..contraction.len())]
        );
    }
    if rng.gen_bool(0.15) {
        text = text.replacen("...", "\u{85}", 1);
    }
    if rng.gen_bool(0.1) {
        text = format!("\u{93}{text}\u{94}");
    }
    if rng.gen_bool(0.08) {
        text = text.replacen(", ", " \u{96} ", 1);
    }
    if rng.gen_bool(0.05) {
        text = text.replacen(' ', "\u{97}", 1);
    }
    if rng.gen_bool(0.08) {
        text = text.replacen(' ', "\u{a0}", 1);
    }
    if rng.gen_bool(0.05) {
        text.push_str(" Caf\u{e9} Se\u{f1}or na\u{ef}ve.");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn utterances_carry_their_cue_words() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for e in Emotion::ALL {
            for _ in 0..20 {
                let text = utterance(&mut rng, e);
                let lower = text.to_lowercase();
                assert!(cue_words(e).iter().any(|w| lower.contains(w)), "{text}");
            }
        }
    }
}
