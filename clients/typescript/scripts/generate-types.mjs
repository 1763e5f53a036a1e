// Generates TypeScript declarations for every schema of the OpenAPI document (no dependencies).
// Usage: node scripts/generate-types.mjs <openapi.json> <out.d.ts>
import { readFileSync, writeFileSync } from "node:fs";

export function generate(spec) {
  const schemas = spec.components?.schemas ?? {};
  const type = (s) => {
    if (!s || Object.keys(s).length === 0) return "unknown";
    if (s.$ref) return s.$ref.split("/").pop();
    if (s.const !== undefined) return JSON.stringify(s.const);
    if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
    if (s.anyOf || s.oneOf) return [...new Set((s.anyOf ?? s.oneOf).map(type))].join(" | ");
    switch (s.type) {
      case "string": return "string";
      case "integer": case "number": return "number";
      case "boolean": return "boolean";
      case "null": return "null";
      case "array": return `Array<${type(s.items)}>`;
      case "object":
        if (s.properties) return `{ ${Object.entries(s.properties).map(([k, v]) => `${JSON.stringify(k)}${(s.required ?? []).includes(k) ? "" : "?"}: ${type(v)}`).join("; ")} }`;
        return `Record<string, ${s.additionalProperties ? type(s.additionalProperties) : "unknown"}>`;
      default: return "unknown";
    }
  };
  let out = "// Generated from docs/openapi.json by scripts/generate-types.mjs. Do not edit.\n\n";
  for (const [name, s] of Object.entries(schemas).sort(([a], [b]) => a.localeCompare(b))) {
    if (s.description) out += `/** ${s.description.replace(/\*\//g, "*\\/")} */\n`;
    if (s.type === "object" && s.properties) {
      out += `export interface ${name} {\n`;
      for (const [k, v] of Object.entries(s.properties)) {
        if (v.description) out += `  /** ${v.description.replace(/\*\//g, "*\\/")} */\n`;
        out += `  ${JSON.stringify(k)}${(s.required ?? []).includes(k) ? "" : "?"}: ${type(v)};\n`;
      }
      out += "}\n\n";
    } else {
      out += `export type ${name} = ${type(s)};\n\n`;
    }
  }
  return out;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [, , input, output] = process.argv;
  writeFileSync(output, generate(JSON.parse(readFileSync(input, "utf8"))));
}
