import { copyFileSync, createReadStream, existsSync, mkdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig, type Plugin } from 'vite';

const DEMO_DIR = fileURLToPath(new URL('../../models/xq-demo/', import.meta.url));
/** The files of the bundled demo model the page loads (the checkpoint, its tokenizer and its licence notes). */
export const DEMO_FILES = ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors', 'NOTICE', 'README.md'];

/**
 * Serves models/xq-demo at /models/xq-demo/ in `vite dev` (with byte ranges) and copies it into the static build, so
 * the page can `loadModel(new URL('models/xq-demo/', location.href))` from any static file server.
 */
function demoModel(): Plugin {
  let outDir = 'dist';
  return {
    name: 'xquant-demo-model',
    configResolved(c) {
      outDir = resolve(c.root, c.build.outDir);
    },
    configureServer(server) {
      server.middlewares.use('/models/xq-demo/', (req, res, next) => {
        const name = decodeURIComponent((req.url ?? '/').split('?')[0]!.slice(1));
        if (!DEMO_FILES.includes(name)) return next();
        const file = join(DEMO_DIR, name);
        const size = statSync(file).size;
        const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
        const start = m ? Number(m[1]) : 0;
        const end = m && m[2] ? Math.min(Number(m[2]), size - 1) : size - 1;
        if (start >= size) {
          res.writeHead(416, { 'content-range': `bytes */${size}` });
          return res.end();
        }
        res.writeHead(m ? 206 : 200, { 'content-length': String(end - start + 1), 'accept-ranges': 'bytes', ...(m ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}) });
        createReadStream(file, { start, end }).pipe(res);
      });
    },
    writeBundle() {
      const dest = join(outDir, 'models', 'xq-demo');
      mkdirSync(dest, { recursive: true });
      for (const f of DEMO_FILES) if (existsSync(join(DEMO_DIR, f))) copyFileSync(join(DEMO_DIR, f), join(dest, f));
    },
  };
}

export default defineConfig({
  // relative asset URLs: the build works from any directory of any static server
  base: './',
  plugins: [demoModel()],
  build: {
    target: 'es2022',
    outDir: 'dist',
    emptyOutDir: true,
    // tfjs-core and the backends are large by nature; say so once instead of warning on every build
    chunkSizeWarningLimit: 4096,
  },
  logLevel: 'warn',
});
