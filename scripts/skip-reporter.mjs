// A vitest reporter that lists every skipped test after the summary, with its reason: the note given to
// `ctx.skip(note)`, else its title (tests that skip as a group say what they need in the describe title).
import { relative } from 'node:path';

export default class SkipReporter {
  onInit(vitest) {
    this.root = vitest.config.root;
  }

  onTestRunEnd(testModules) {
    const lines = [];
    for (const m of testModules) {
      for (const t of m.children.allTests('skipped')) {
        const note = t.result().note;
        lines.push(`  ↓ ${relative(this.root ?? process.cwd(), m.moduleId)} › ${t.fullName}${note ? ` — ${note}` : ''}`);
      }
    }
    if (lines.length > 0) console.log(`\nskipped tests (${lines.length}):\n${lines.join('\n')}\n`);
  }
}
