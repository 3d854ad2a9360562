// The tool every scenario offers the model: an input with an enum, an integer range and required
// fields, as real tools have, and a result distinctive enough to spot in the model's final answer.
import { z } from 'zod';

export const WEATHER_TOOL = 'get_weather';
export const WEATHER_DESCRIPTION = 'Get the weather forecast for a city';

export const weatherInput = z.object({
  city: z.string().min(1).describe('The city to look up'),
  unit: z.enum(['celsius', 'fahrenheit']).describe('The temperature unit'),
  days: z.number().int().min(1).max(7).describe('How many days of forecast'),
});

/** What the tool returns: the final answer should be built from it (the station id gives it away). */
export function forecast(input) {
  return `Forecast for ${input.city}: 17 degrees ${input.unit}, light rain (station WX-4471).`;
}
