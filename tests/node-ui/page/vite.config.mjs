// Builds the useChat page (tests/test_ai_sdk_browser.py runs `vite build` with an --outDir of its own).
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

export default defineConfig({
  root: import.meta.dirname,
  base: './',
  plugins: [react()],
  logLevel: 'error',
});
