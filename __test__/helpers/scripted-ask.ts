// Answers `accelerate config`'s questions from a list, in order, recording what was asked
// and what was warned, so that questionnaire tests need no terminal.
import type { Ask } from "../../ts/cli/questionnaire.js";

export interface ScriptedAsk {
  ask: Ask;
  /** Answers still to give; push more to script another run. */
  answers: unknown[];
  /** Each question asked, in order. */
  asked: string[];
  warnings: string[];
}

export function scriptedAsk(answers: unknown[]): ScriptedAsk {
  const script: ScriptedAsk = { answers, asked: [], warnings: [], ask: undefined as unknown as Ask };
  const next = (message: string): unknown => {
    script.asked.push(message);
    if (script.answers.length === 0) throw new Error(`scriptedAsk: no answer left for "${message}"`);
    return script.answers.shift();
  };
  script.ask = {
    text: async (message) => next(message) as string,
    select: async (message) => next(message) as never,
    confirm: async (message) => next(message) as boolean,
    warn: (message) => void script.warnings.push(message),
  };
  return script;
}
