// Validates an AsyncAPI document with the official parser (@asyncapi/parser), offline.
//   node validate-asyncapi.mjs FILE          exit 0 when it has no error diagnostic
//   node validate-asyncapi.mjs --broken FILE first breaks one payload schema (`type: 42`) and
//                                            exits 0 only if the parser rejects it: proof that
//                                            it really validates our payload schemas
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';

const args = process.argv.slice(2);
const broken = args[0] === '--broken';
const file = broken ? args[1] : args[0];
const document = JSON.parse(readFileSync(file, 'utf8'));
if (broken) {
  const [name] = Object.keys(document.components.messages);
  document.components.messages[name].payload.schema.type = 42;
}
const severities = ['error', 'warning', 'info', 'hint'];
const { diagnostics } = await new Parser().parse(JSON.stringify(document));
for (const d of diagnostics) {
  console.log(`${severities[d.severity]} ${d.code} at /${d.path.join('/')}: ${d.message}`);
}
const errors = diagnostics.filter((d) => d.severity === 0).length;
console.log(`${file}${broken ? ' (with a broken payload schema)' : ''}: ${errors} errors, ${diagnostics.length - errors} other diagnostics`);
process.exit(broken ? (errors > 0 ? 0 : 1) : (errors > 0 ? 1 : 0));
