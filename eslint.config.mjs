// Type-aware lint: the rules that catch what the compiler does not — floating promises (a lost
// rejection in a daemon), promises passed where callbacks are expected, and `any`.
//
// layering/one-way: the top-level folders form layers (README, Layout), lowest first. A folder may
// import its own files and folders of lower layers; never a folder of its own layer or a higher
// one. test/ and scripts/ sit above everything and may import anything. Type-only imports count:
// an interface in the wrong folder is a cycle too.
import path from 'node:path';
import tseslint from 'typescript-eslint';

const LAYERS = [
  ['lib'],
  ['datastore'],
  ['ipam'],
  ['policy'],
  ['model', 'dataplane', 'protocol'],
  ['bgp'],
  ['workload'],
  ['driver', 'agent', 'config'],
  ['daemon', 'cli'],
  ['bin'],
  ['test', 'scripts'],
];
const UNRESTRICTED = new Set(['test', 'scripts']);
const LAYER_OF = new Map(LAYERS.flatMap((folders, i) => folders.map((f) => [f, i])));
const ROOT = import.meta.dirname;

/** Top-level folder of an absolute path inside the project, or undefined (a file at the root). */
function topFolder(absolute) {
  const parts = path.relative(ROOT, absolute).split(path.sep);
  return parts.length > 1 && parts[0] !== '..' ? parts[0] : undefined;
}

const oneWay = {
  meta: {
    type: 'problem',
    docs: { description: 'imports between top-level folders point down the layers of README Layout' },
    schema: [],
    messages: {
      upward: '{{from}}/ must not import {{to}}/: layers point one way, see README Layout',
      unplaced: '{{from}}/ has no layer: add it to LAYERS in eslint.config.mjs and to README Layout',
    },
  },
  create(context) {
    const from = topFolder(context.filename);
    if (from === undefined || UNRESTRICTED.has(from)) return {};
    const fromLayer = LAYER_OF.get(from);
    if (fromLayer === undefined) {
      return { Program: (node) => context.report({ node, messageId: 'unplaced', data: { from } }) };
    }
    const check = (source) => {
      if (source?.type !== 'Literal' || typeof source.value !== 'string' || !source.value.startsWith('.')) return;
      const to = topFolder(path.resolve(path.dirname(context.filename), source.value));
      if (to === undefined || to === from) return;
      const toLayer = LAYER_OF.get(to);
      if (toLayer !== undefined && toLayer < fromLayer) return;
      context.report({ node: source, messageId: 'upward', data: { from, to } });
    };
    return {
      ImportDeclaration: (node) => check(node.source),
      ExportNamedDeclaration: (node) => check(node.source),
      ExportAllDeclaration: (node) => check(node.source),
      ImportExpression: (node) => check(node.source),
      TSImportType: (node) => check(node.argument?.type === 'TSLiteralType' ? node.argument.literal : node.argument),
      TSExternalModuleReference: (node) => check(node.expression),
      CallExpression: (node) => {
        if (node.callee.type === 'Identifier' && node.callee.name === 'require') check(node.arguments[0]);
      },
    };
  },
};

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'eslint.config.mjs'] },
  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.base],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    plugins: { layering: { rules: { 'one-way': oneWay } } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/await-thenable': 'error',
      'layering/one-way': 'error',
    },
  },
);
